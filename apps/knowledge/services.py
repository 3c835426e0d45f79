"""Writes for knowledge: collections, uploads, ingestion and its controls (cancel, retry, re-ingest, delete).

Upload checks what it can without parsing (size, type by content, duplicate bytes) and refuses at once with a
message; everything else happens in `document_ingest`, one Celery task per document version on the `ingest`
queue (acks_late, prefetch 1: a bulk upload is many small tasks that interleave with other people's, instead
of one long job that holds a worker). A file that cannot be read fails alone: its version stores the
failure code and the message, and nothing else in the collection changes.

Ingestion: extract -> chunk -> embed in batches of EMBED_BATCH through the engine -> store each batch. Between
batches it saves a heartbeat and checks the cancel flag. It writes the new version's chunks while the
document's current version is still the one retrieval reads, then flips `Document.current_version` and
deletes the replaced version's chunks in one transaction: a re-upload or re-ingest never shows a mix, and a
failed one leaves the previous version served.

A worker killed mid-ingestion leaves the version `processing` with a stale heartbeat; beat's
`versions_fail_stale` marks it failed and retryable. A redelivered task takes over a processing version only
once its heartbeat is stale, so a duplicate delivery never runs beside a live one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.inference_client import InferenceError, inference_embed
from apps.knowledge.chunking import text_chunk
from apps.knowledge.extraction import (
    ExtractionError,
    document_extract,
    document_format_detect,
    upload_size_check,
)
from apps.knowledge.models import Chunk, Collection, Document, DocumentVersion

log = logging.getLogger(__name__)

EMBED_BATCH = 64  # chunks per engine call: a cancel or a heartbeat every few seconds on a CPU
WORKER_LOST_ERROR = "The worker stopped while ingesting this document. Retry to ingest it again."
ALL_HIDDEN_ERROR = "Every passage in this document was hidden text; nothing visible is left to index."
Status = DocumentVersion.Status


class KnowledgeError(Exception):
    """A refused knowledge action; str(error) is written for the person who asked."""


# --- collections ---------------------------------------------------------------------------------------


def collection_create(*, owner, name: str) -> Collection:
    name = name.strip()
    if not name:
        raise KnowledgeError("A collection needs a name.")
    if len(name) > 100:
        raise KnowledgeError("A collection name has at most 100 characters.")
    try:
        with transaction.atomic():
            return Collection.objects.create(owner=owner, name=name)
    except IntegrityError as error:
        raise KnowledgeError(f"You already have a collection named “{name}”.") from error


def collection_delete(*, collection: Collection) -> None:
    """The collection, its documents, their chunks and their stored originals."""
    names = list(
        DocumentVersion.objects.filter(document__collection=collection).values_list("original", flat=True).distinct()
    )
    collection.delete()
    transaction.on_commit(lambda: _originals_delete(names))


# --- uploads -------------------------------------------------------------------------------------------


def upload_size_refuse(*, filename: str, size: int) -> None:
    """Refuse a file over the size limit from its declared size, before it is read into memory."""
    try:
        upload_size_check(size=size)
    except ExtractionError as error:
        raise KnowledgeError(f"“{filename}”: {error}") from error


def document_upload(*, collection: Collection, filename: str, data: bytes) -> DocumentVersion:
    """Store an uploaded file and queue its ingestion. A new name makes a new document; changed bytes under a
    known name make a new version of it. Raises KnowledgeError for a file over the size limit, of a type
    Atelier does not read or whose content does not match its name, or whose bytes are already here."""
    filename = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()[:255]
    try:
        upload_size_check(size=len(data))
        document_format = document_format_detect(data=data, filename=filename)
    except ExtractionError as error:
        raise KnowledgeError(str(error)) from error
    content_hash = hashlib.sha256(data).hexdigest()
    with transaction.atomic():
        Collection.objects.select_for_update().get(pk=collection.pk)  # one upload at a time per collection
        duplicate = Document.objects.filter(collection=collection, content_hash=content_hash).first()
        if duplicate is not None:
            raise KnowledgeError(f"“{filename}” has the same content as “{duplicate.filename}”, already here.")
        document, _ = Document.objects.get_or_create(
            collection=collection, filename=filename, defaults={"content_hash": content_hash}
        )
        document.content_hash = content_hash
        document.save(update_fields=["content_hash", "updated_at"])
        version = DocumentVersion(
            document=document,
            number=_next_number(document),
            content_hash=content_hash,
            size=len(data),
            format=str(document_format),
        )
        version.original.save(filename, ContentFile(data), save=False)
        version.save()
        _enqueue(version)
    return version


def document_reingest(*, document: Document) -> DocumentVersion:
    """A new version from the newest stored original, parsed again from the bytes (not just re-embedded):
    what a fix in extraction or chunking needs. The current version stays served until it is ready."""
    with transaction.atomic():
        latest = document.versions.select_for_update().order_by("-number").first()
        if latest is None:
            raise KnowledgeError("This document has no stored file to ingest.")
        if latest.active:
            raise KnowledgeError("This document is already being ingested.")
        version = DocumentVersion.objects.create(
            document=document,
            number=latest.number + 1,
            original=latest.original.name,
            content_hash=latest.content_hash,
            size=latest.size,
            format=latest.format,
        )
        _enqueue(version)
    return version


def document_cancel(*, version: DocumentVersion) -> DocumentVersion:
    """A queued version is cancelled at once; a processing one at its next batch (the task checks the flag)."""
    with transaction.atomic():
        version = DocumentVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == Status.QUEUED:
            version.status = Status.CANCELLED
        elif version.status == Status.PROCESSING:
            version.cancel_requested = True
        else:
            raise KnowledgeError("Only a queued or running ingestion can be cancelled.")
        version.save(update_fields=["status", "cancel_requested", "updated_at"])
    return version


def document_retry(*, version: DocumentVersion) -> DocumentVersion:
    """Queue a failed or cancelled version again, from its stored original."""
    with transaction.atomic():
        version = DocumentVersion.objects.select_for_update().get(pk=version.pk)
        if not version.retryable:
            raise KnowledgeError("Only a failed or cancelled ingestion can be retried.")
        version.status, version.cancel_requested, version.failure, version.error = Status.QUEUED, False, "", ""
        version.save(update_fields=["status", "cancel_requested", "failure", "error", "updated_at"])
        _enqueue(version)
    return version


def document_delete(*, document: Document) -> None:
    """The document, every version, their chunks (cascade) and the stored originals no other version uses."""
    names = set(document.versions.values_list("original", flat=True))
    document.delete()
    still_used = set(DocumentVersion.objects.filter(original__in=names).values_list("original", flat=True))
    transaction.on_commit(lambda: _originals_delete(names - still_used))


def _next_number(document: Document) -> int:
    last = document.versions.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


def _enqueue(version: DocumentVersion) -> None:
    from apps.knowledge.tasks import document_ingest_task  # tasks import services: import at call time

    version_id = version.pk
    transaction.on_commit(lambda: document_ingest_task.delay(version_id))


def _originals_delete(names) -> None:
    from django.core.files.storage import default_storage

    for name in names:
        if name:
            default_storage.delete(name)


# --- ingestion -----------------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


def document_ingest(*, version_id: int) -> str:
    """Ingest one version (the `ingest` task's body); returns the status it ended in, or "skipped"."""
    version = _claim(version_id)
    if version is None:
        return "skipped"
    try:
        _ingest(version)
    except ExtractionError as error:
        _fail(version, failure=str(error.failure), error=str(error))
    except InferenceError as error:
        _fail(version, failure="engine", error=f"Embedding failed: {error}")
    except _Cancelled:
        Chunk.objects.filter(version=version).delete()
        _set(version, status=Status.CANCELLED, chunks_total=0, chunks_embedded=0)
    except Exception:
        log.exception("ingesting document version %s failed", version.pk)
        _fail(version, failure="internal", error="An internal error stopped the ingestion. Retry it.")
        raise
    return version.status


def _claim(version_id: int) -> DocumentVersion | None:
    """Take the version: a queued one, or a processing one whose worker went silent (a redelivery)."""
    stale_before = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_INGEST_STALE_SECONDS)
    with transaction.atomic():
        version = (
            DocumentVersion.objects.select_for_update(of=("self",))
            .select_related("document")
            .filter(Q(status=Status.QUEUED) | Q(status=Status.PROCESSING, heartbeat_at__lt=stale_before), pk=version_id)
            .first()
        )
        if version is None:
            return None
        if version.cancel_requested:
            version.status = Status.CANCELLED
            version.save(update_fields=["status", "updated_at"])
            return None
        Chunk.objects.filter(version=version).delete()  # a redelivery starts again from the bytes
        version.status, version.attempts, version.heartbeat_at = Status.PROCESSING, version.attempts + 1, timezone.now()
        version.pages_parsed = version.chunks_total = version.chunks_embedded = 0
        version.save()
    return version


def _ingest(version: DocumentVersion) -> None:
    with version.original.open("rb") as original:
        data = original.read()
    extraction = document_extract(data=data, filename=version.document.filename)
    _set(
        version,
        format=str(extraction.format),
        text=extraction.text,
        pages=[[page.number, page.start, page.end] for page in extraction.pages],
        pages_parsed=len(extraction.pages),
        hidden=[{**asdict(passage), "reason": str(passage.reason)} for passage in extraction.hidden],
        hidden_count=len(extraction.hidden),
        tag_messages=extraction.tag_messages,
    )
    if not extraction.text.strip():
        _fail(version, failure="all hidden", error=ALL_HIDDEN_ERROR)
        return
    chunks = text_chunk(extraction=extraction)
    _set(version, chunks_total=len(chunks))
    for start in range(0, len(chunks), EMBED_BATCH):
        if DocumentVersion.objects.filter(pk=version.pk, cancel_requested=True).exists():
            raise _Cancelled
        batch = chunks[start : start + EMBED_BATCH]
        vectors = inference_embed(texts=[chunk.text for chunk in batch])
        Chunk.objects.bulk_create(
            Chunk(
                version=version,
                index=chunk.index,
                text=chunk.text,
                start=chunk.start,
                end=chunk.end,
                page=chunk.page,
                heading_path=chunk.heading_path,
                embedding=vector,
            )
            for chunk, vector in zip(batch, vectors, strict=True)
        )
        _set(version, chunks_embedded=start + len(batch))
    _publish(version)


def _publish(version: DocumentVersion) -> None:
    """Make `version` the one retrieval reads, unless a newer version already is, and drop the chunks of the
    version it replaces: one transaction, so readers see the old chunks or the new, never both or neither."""
    with transaction.atomic():
        document = (
            Document.objects.select_for_update(of=("self",))
            .select_related("current_version")
            .get(pk=version.document_id)
        )
        if DocumentVersion.objects.filter(pk=version.pk, cancel_requested=True).exists():
            raise _Cancelled
        replaced = document.current_version
        _set(version, status=Status.READY)
        if replaced is None or replaced.number < version.number:
            document.current_version = version
            document.save(update_fields=["current_version", "updated_at"])
            if replaced is not None:
                Chunk.objects.filter(version=replaced).delete()
        else:  # a newer version was published first: this one is already out of date
            Chunk.objects.filter(version=version).delete()


def _set(version: DocumentVersion, **fields) -> None:
    """Save `fields` and the heartbeat: every progress step is also a sign of life."""
    for name, value in fields.items():
        setattr(version, name, value)
    version.heartbeat_at = timezone.now()
    version.save(update_fields=[*fields, "heartbeat_at", "updated_at"])


def _fail(version: DocumentVersion, *, failure: str, error: str) -> None:
    Chunk.objects.filter(version=version).delete()
    _set(version, status=Status.FAILED, failure=failure[:40], error=error[:500], chunks_embedded=0)
    log.info("document version %s failed: %s", version.pk, failure)


def versions_fail_stale() -> int:
    """Mark versions whose worker went silent (no heartbeat for KNOWLEDGE_INGEST_STALE_SECONDS) as failed and
    retryable; run by beat. Their partial chunks are removed; the current version stays served."""
    cutoff = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_INGEST_STALE_SECONDS)
    with transaction.atomic():
        stale = list(
            DocumentVersion.objects.select_for_update(skip_locked=True).filter(
                status=Status.PROCESSING, heartbeat_at__lt=cutoff
            )
        )
        Chunk.objects.filter(version__in=stale).delete()
        for version in stale:
            version.status, version.failure, version.error = Status.FAILED, "worker lost", WORKER_LOST_ERROR
            version.chunks_embedded = 0
        DocumentVersion.objects.bulk_update(stale, ["status", "failure", "error", "chunks_embedded", "updated_at"])
    return len(stale)
