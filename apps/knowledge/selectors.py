"""Reads for knowledge, and the one place that decides who may see a collection, a document or a version:
the collection's owner, and nobody else. Everyone else gets 404, not 403, so ids reveal nothing."""

from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery
from django.http import Http404

from apps.knowledge.models import Collection, Document, DocumentVersion


def collection_list_owned(*, user) -> QuerySet[Collection]:
    return Collection.objects.filter(owner=user).annotate(document_count=Count("documents"))


def collection_get_owned(*, user, pk: int) -> Collection:
    collection = Collection.objects.filter(owner=user, pk=pk).first() if user.is_authenticated else None
    if collection is None:
        raise Http404("No such collection.")
    return collection


def document_get_owned(*, user, pk: int) -> Document:
    document = (
        Document.objects.select_related("collection", "current_version").filter(collection__owner=user, pk=pk).first()
        if user.is_authenticated
        else None
    )
    if document is None:
        raise Http404("No such document.")
    return document


def version_get_owned(*, user, pk: int) -> DocumentVersion:
    version = (
        DocumentVersion.objects.select_related("document__collection")
        .filter(document__collection__owner=user, pk=pk)
        .first()
        if user.is_authenticated
        else None
    )
    if version is None:
        raise Http404("No such document version.")
    return version


def document_list(*, collection: Collection) -> list[Document]:
    """The collection's documents, each with `.latest` (its newest version: what the status shows)."""
    newest = DocumentVersion.objects.filter(document=OuterRef("document")).order_by("-number").values("pk")[:1]
    latest = DocumentVersion.objects.filter(pk=Subquery(newest)).defer("text", "hidden")
    documents = list(
        collection.documents.select_related("current_version").prefetch_related(
            Prefetch("versions", queryset=latest, to_attr="latest_versions")
        )
    )
    for document in documents:
        document.latest = document.latest_versions[0] if document.latest_versions else None
    return documents


def version_progress(version: DocumentVersion) -> dict:
    """What the collection page polls for one version: status, counters, error, hidden passages removed."""
    return {
        "id": version.pk,
        "document": version.document_id,
        "number": version.number,
        "status": version.status,
        "status_label": version.get_status_display(),
        "pages_parsed": version.pages_parsed,
        "chunks_total": version.chunks_total,
        "chunks_embedded": version.chunks_embedded,
        "failure": version.failure,
        "error": version.error,
        "hidden_count": version.hidden_count,
        "cancel_requested": version.cancel_requested,
        "active": version.active,
        "retryable": version.retryable,
    }


def collection_progress(*, collection: Collection) -> list[dict]:
    return [version_progress(document.latest) for document in document_list(collection=collection) if document.latest]
