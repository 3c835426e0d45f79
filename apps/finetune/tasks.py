"""Thin Celery wrappers around the fine-tune services: one training task per job on `finetune`, and beat's sweep."""

from celery import shared_task
from django.conf import settings

from apps.finetune.jobs import finetune_job_run, finetune_jobs_fail_stale


@shared_task(name="finetune.job_run", bind=True, max_retries=None)  # on `finetune` (CELERY_TASK_ROUTES)
def finetune_job_run_task(self, job_id: int) -> str:
    outcome = finetune_job_run(job_id=job_id)
    if outcome == "busy":  # this machine is training another job: the job stays queued, asked again later
        raise self.retry(countdown=settings.FINETUNE_BUSY_RETRY_SECONDS)
    return outcome


@shared_task(name="finetune.jobs_fail_stale")
def finetune_jobs_fail_stale_task() -> int:
    """Run by beat (CELERY_BEAT_SCHEDULE): jobs whose worker vanished, or whose message was lost, become failed
    and retryable."""
    return finetune_jobs_fail_stale()
