"""The Celery app. Tasks live in each app's tasks.py and are thin wrappers around services."""

import os
import sys

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# `chat` carries answer generation: long, I/O-bound tasks (streaming from the inference server), served
# by a threaded worker so many answers stream at once while the engine batches them.
QUEUES = ("default", "ingest", "finetune", "chat")

app = Celery("atelier")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Explicit bindings: each queue has its own exchange and routing key, so the worker's banner and any
# external broker tooling show exactly where a message goes.
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
app.autodiscover_tasks()


def worker_argv(*, concurrency: int, name: str, queues: tuple[str, ...] = QUEUES, pool: str = "prefork") -> list[str]:
    """The command that runs a worker (used by `make run` and the tests); by default on every queue."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "-n",
        name,
    ]


def beat_argv(*, schedule_file: str) -> list[str]:
    """The command that runs beat, the scheduler of periodic tasks (CELERY_BEAT_SCHEDULE). Run exactly one."""
    return [sys.executable, "-m", "celery", "-A", "config", "beat", "--schedule", schedule_file, "--loglevel", "INFO"]
