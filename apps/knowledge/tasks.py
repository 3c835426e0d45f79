"""Thin Celery wrappers around the knowledge services: one ingestion task per document version on `ingest`."""

from celery import shared_task

from apps.knowledge.ingestion import document_ingest, versions_fail_stale
from apps.knowledge.queueing import INGEST_TASK, versions_dispatch


@shared_task(name=INGEST_TASK)  # on the `ingest` queue (CELERY_TASK_ROUTES); sent by queueing.versions_dispatch
def document_ingest_task(version_id: int) -> str:
    try:
        return document_ingest(version_id=version_id)
    finally:  # this version's share of the workers goes to its owner's next waiting one (or someone else's)
        versions_dispatch()


@shared_task(name="knowledge.versions_fail_stale")
def versions_fail_stale_task() -> int:
    """Run by beat (CELERY_BEAT_SCHEDULE): versions whose worker vanished become failed, retryable ones; tasks
    that were lost are sent again; and anything waiting for a free share is sent (the dispatcher's safety net)."""
    failed = versions_fail_stale()
    versions_dispatch()
    return failed
