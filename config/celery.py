"""The Celery app. Tasks live in each app's tasks.py and are thin wrappers around services."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("atelier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in ("default", "ingest", "finetune")]
app.autodiscover_tasks()
