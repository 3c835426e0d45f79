"""Writes for knowledge: collections, uploads and the controls of ingestion (cancel, retry, re-ingest, delete).

Upload checks what it can without parsing (size, type by content, duplicate bytes) and refuses at once with a
message; the rest is `apps/knowledge/ingestion.py`, run by one Celery task per document version on the
`ingest` queue (acks_late, prefetch 1: a bulk upload is many small tasks, not one long job that holds a
worker). Tasks are sent fairly, a few per person at a time (queueing.py), once the transaction that queued
their versions commits. Cancel sets a flag that ingestion checks between batches; retry and re-ingest queue a
version again (re-ingest as a new version, parsed again from the stored bytes, while the current one stays
served).
"""

from __future__ import annotations

import hashlib

from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction

from apps.core.unicode import unicode_clean
from apps.knowledge.extraction import ExtractionError, document_format_detect, upload_size_check
from apps.knowledge.models import Collection, Document, DocumentVersion
from apps.knowledge.queueing import versions_dispatch

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
    # The name is untrusted text shown on pages and in prompts: invisible and bidi characters go first.
    filename = unicode_clean(filename, source="upload name").text
    filename = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()[:255]
    if not filename:
        raise KnowledgeError("The file needs a name.")
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
        transaction.on_commit(versions_dispatch)  # sent when its owner's share of the workers allows
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
        transaction.on_commit(versions_dispatch)  # sent when its owner's share of the workers allows
    return version


def document_cancel(*, version: DocumentVersion) -> DocumentVersion:
    """A queued version is cancelled at once; a processing one at its next batch (the task checks the flag)."""
    with transaction.atomic():
        version = DocumentVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == Status.QUEUED:
            version.status = Status.CANCELLED
            transaction.on_commit(versions_dispatch)  # its share of the workers goes to the next one
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
        version.dispatched_at, version.dispatches = None, 0
        fields = ["status", "cancel_requested", "failure", "error", "dispatched_at", "dispatches", "updated_at"]
        version.save(update_fields=fields)
        transaction.on_commit(versions_dispatch)  # sent when its owner's share of the workers allows
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


def _originals_delete(names) -> None:
    from django.core.files.storage import default_storage

    for name in names:
        if name:
            default_storage.delete(name)
