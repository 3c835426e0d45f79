"""Thin Celery wrappers around the fine-tuning services, on the `finetune` queue (CELERY_TASK_ROUTES)."""

from celery import shared_task

from apps.finetune.evaluation import evaluation_run

# --- adapters ------------------------------------------------------------------------------------------


@shared_task(name="finetune.evaluation_run")
def evaluation_run_task(evaluation_id: int) -> str:
    return evaluation_run(evaluation_id=evaluation_id).status


# --- end adapters ---
