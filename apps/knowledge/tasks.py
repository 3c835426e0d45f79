"""Thin Celery wrappers around the knowledge services: one ingestion task per document version on `ingest`."""

from celery import shared_task

from apps.knowledge.ingestion import document_ingest, versions_fail_stale


@shared_task(name="knowledge.document_ingest")  # on the `ingest` queue (CELERY_TASK_ROUTES)
def document_ingest_task(version_id: int) -> str:
    return document_ingest(version_id=version_id)


@shared_task(name="knowledge.versions_fail_stale")
def versions_fail_stale_task() -> int:
    """Run by beat (CELERY_BEAT_SCHEDULE): versions whose worker vanished become failed, retryable ones."""
    return versions_fail_stale()
