"""The Celery app. Tasks live in each app's tasks.py and are thin wrappers around services."""

import os

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

QUEUES = ("default", "ingest", "finetune")

app = Celery("atelier")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Explicit bindings: each queue has its own exchange and routing key, so the worker's banner and any
# external broker tooling show exactly where a message goes.
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
app.autodiscover_tasks()
