"""Thin Celery wrappers around the fine-tuning services, on the `finetune` queue (CELERY_TASK_ROUTES), and
beat's sweep of fine-tune jobs.

The evaluation (measures.py, training.py) imports torch; the web process imports this module to queue tasks and
never evaluates, so the task body imports it when it runs.
"""

from celery import shared_task
from django.conf import settings

from apps.finetune.jobs import finetune_job_run, finetune_jobs_fail_stale

# --- adapters ------------------------------------------------------------------------------------------


@shared_task(name="finetune.evaluation_run")
def evaluation_run_task(evaluation_id: int) -> str:
    from apps.finetune.evaluation import evaluation_run

    return evaluation_run(evaluation_id=evaluation_id).status


# --- end adapters ---

# --- jobs ------------------------------------------------------------------------------------------------


@shared_task(name="finetune.job_run", bind=True, max_retries=None)
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


# --- end jobs --------------------------------------------------------------------------------------------
