"""A task crosses Redis into a real `celery worker` process and its result comes back."""

import os

import psutil
import pytest

from apps.core.tasks import echo

pytestmark = pytest.mark.django_db(transaction=True)


def test_round_trip_through_a_real_worker_process(celery_worker_process):
    result = echo.apply_async(args=[{"hello": "world", "n": 3}], queue="default")
    value = result.get(timeout=60)
    assert value["payload"] == {"hello": "world", "n": 3}
    worker_pid = value["worker_pid"]
    assert worker_pid != os.getpid()
    # It ran inside the worker we started (a prefork child of it), not in this test process.
    worker = psutil.Process(celery_worker_process.pid)
    assert worker_pid in {worker.pid, *(child.pid for child in worker.children(recursive=True))}


@pytest.mark.parametrize("queue", ["ingest", "finetune"])
def test_the_worker_consumes_every_product_queue(celery_worker_process, queue):
    assert echo.apply_async(args=[{"queue": queue}], queue=queue).get(timeout=60)["payload"] == {"queue": queue}


def test_every_periodic_task_names_a_registered_task():
    from django.conf import settings

    from config.celery import app

    app.loader.import_default_modules()
    assert settings.CELERY_BEAT_SCHEDULE
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry
