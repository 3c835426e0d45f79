"""Thin Celery wrapper around candidate generation (queue `default`); progress and cancel live on the TaskSet."""

from celery import shared_task

from apps.labeling.services import candidates_generate


@shared_task(name="labeling.candidates_generate")
def candidates_generate_task(task_set_id: int) -> str:
    return candidates_generate(task_set_id=task_set_id)
