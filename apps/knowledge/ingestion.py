"""Ingesting one document version, in a worker: extract -> chunk -> embed in batches -> store -> publish.

Embedding goes through the engine (/v1/embeddings) EMBED_BATCH chunks at a time; after each batch the
version saves its progress (which is also its heartbeat) and checks its cancel flag. The new version's chunks
are written while the document's current version is still the one retrieval reads; `_publish` then flips
`Document.current_version` and deletes the replaced version's chunks in one transaction, so a re-upload or
re-ingest never shows a mix, and a failed one leaves the previous version served. A file that cannot be read
fails alone: its version stores the failure code and the message, nothing else in the collection changes.

A worker killed mid-ingestion leaves the version `processing` with a stale heartbeat; beat's
`versions_fail_stale` marks it failed and retryable. A task message lost before any worker took it leaves the
version `queued`: the same check sends it again (queueing.py), and fails it as retryable if that keeps
failing. A redelivered task (acks_late) takes over a processing version only once its heartbeat is stale, so a
duplicate delivery never runs beside a live one, and it starts again from the bytes. A slow worker that beat
wrongly took for dead finds out at its next batch: each batch is written under the version's row lock after
checking that its attempt still owns the version, so it stops instead of writing into a retry's chunks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.inference_client import InferenceError, inference_embed
from apps.knowledge.chunking import text_chunk
from apps.knowledge.extraction import ExtractionError, document_extract
from apps.knowledge.models import Chunk, Document, DocumentVersion

log = logging.getLogger(__name__)

EMBED_BATCH = 64  # chunks per engine call: a cancel check and a heartbeat every second or so on a CPU
WORKER_LOST_ERROR = "The worker stopped while ingesting this document. Retry to ingest it again."
NEVER_STARTED_ERROR = "No worker started ingesting this document; its job was lost. Retry to queue it again."
ALL_HIDDEN_ERROR = "Every passage in this document was hidden text; nothing visible is left to index."
Status = DocumentVersion.Status


class _Cancelled(Exception):
    pass


class _Superseded(Exception):
    """This attempt no longer owns the version: beat failed it as silent (and it may have been retried),
    or the document was deleted. It stops without writing anything more."""


def document_ingest(*, version_id: int) -> str:
    """Ingest one version (the `ingest` task's body); returns the status it ended in, "skipped" when there
    was nothing to take, or "superseded" when the version was taken from this attempt meanwhile."""
    version = _claim(version_id)
    if version is None:
        return "skipped"
    try:
        return _ingest_or_fail(version)
    except _Superseded:
        log.warning("document version %s: attempt %s was superseded; it stops", version.pk, version.attempts)
        return "superseded"


def _ingest_or_fail(version: DocumentVersion) -> str:
    try:
        _ingest(version)
    except ExtractionError as error:
        _fail(version, failure=str(error.failure), error=str(error))
    except InferenceError as error:
        _fail(version, failure="engine", error=f"Embedding failed: {error}")
    except _Cancelled:
        with transaction.atomic():  # the status first: it fails when the version is no longer ours
            _set(version, status=Status.CANCELLED, chunks_total=0, chunks_embedded=0)
            Chunk.objects.filter(version=version).delete()
    except _Superseded:
        raise
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
        with transaction.atomic():
            _own(version)  # cancelled or superseded: stop before the engine call
        batch = chunks[start : start + EMBED_BATCH]
        vectors = inference_embed(texts=[chunk.text for chunk in batch])
        with transaction.atomic():  # the ownership check and the write under one row lock
            _own(version)
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


def _own(version: DocumentVersion) -> None:
    """Lock the version's row (inside a transaction) and check this attempt still owns it: raises _Cancelled
    when the owner asked to cancel, _Superseded when beat failed it or another attempt claimed it."""
    state = (
        DocumentVersion.objects.select_for_update()
        .filter(pk=version.pk)
        .values("status", "attempts", "cancel_requested")
    )
    state = state.first()
    if state is None or state["status"] != Status.PROCESSING or state["attempts"] != version.attempts:
        raise _Superseded
    if state["cancel_requested"]:
        raise _Cancelled


def _publish(version: DocumentVersion) -> None:
    """Make `version` the one retrieval reads, unless a newer version already is, and drop the chunks of the
    version it replaces: one transaction, so readers see the old chunks or the new, never both or neither."""
    with transaction.atomic():
        document = (
            Document.objects.select_for_update(of=("self",))
            .select_related("current_version")
            .get(pk=version.document_id)
        )
        _own(version)
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
    """Save `fields` and the heartbeat (every progress step is also a sign of life), only while this attempt
    owns the version: raises _Superseded when it was failed, claimed again or deleted meanwhile."""
    now = timezone.now()
    owned = DocumentVersion.objects.filter(pk=version.pk, status=Status.PROCESSING, attempts=version.attempts)
    if not owned.update(**fields, heartbeat_at=now, updated_at=now):
        raise _Superseded
    for name, value in {**fields, "heartbeat_at": now, "updated_at": now}.items():
        setattr(version, name, value)


def _fail(version: DocumentVersion, *, failure: str, error: str) -> None:
    with transaction.atomic():  # the status first: it fails when the version is no longer ours
        _set(version, status=Status.FAILED, failure=failure[:40], error=error[:500], chunks_embedded=0)
        Chunk.objects.filter(version=version).delete()
    log.info("document version %s failed: %s", version.pk, failure)


def versions_fail_stale() -> int:
    """Beat's check for ingestions nobody is doing; returns how many versions it failed (retryable):
    - processing, with no heartbeat for KNOWLEDGE_INGEST_STALE_SECONDS: the worker died. Its partial chunks
      are removed; the current version stays served.
    - queued, sent to the broker KNOWLEDGE_INGEST_QUEUED_STALE_SECONDS ago and never taken: the message was
      lost. It goes back to waiting, so the dispatcher that runs after this sends it again, first in its
      owner's line; after KNOWLEDGE_INGEST_DISPATCH_MAX sends it fails instead, saying why."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.KNOWLEDGE_INGEST_STALE_SECONDS)
    lost_cutoff = now - timedelta(seconds=settings.KNOWLEDGE_INGEST_QUEUED_STALE_SECONDS)
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
        lost = DocumentVersion.objects.select_for_update(skip_locked=True).filter(
            status=Status.QUEUED, dispatched_at__lt=lost_cutoff
        )
        never_started = list(lost.filter(dispatches__gte=settings.KNOWLEDGE_INGEST_DISPATCH_MAX))
        for version in never_started:
            version.status, version.failure, version.error = Status.FAILED, "never started", NEVER_STARTED_ERROR
        DocumentVersion.objects.bulk_update(never_started, ["status", "failure", "error", "updated_at"])
        lost.exclude(pk__in=[v.pk for v in never_started]).update(dispatched_at=None, updated_at=now)
    return len(stale) + len(never_started)
