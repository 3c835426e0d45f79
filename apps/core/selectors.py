"""Health of every part the product needs, as `ok` or an error string a person can act on."""

from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection

from apps.core.inference_client import inference_health
from apps.registry.selectors import base_models_health
from config.celery import app as celery_app


@dataclass(frozen=True)
class Check:
    name: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.detail == "ok"


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _pgvector() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return "ok" if row else "the vector extension is not installed (run `manage.py migrate`)"


def _redis() -> str:
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    return "ok"


def _worker() -> str:
    replies = celery_app.control.ping(timeout=1.0, limit=1)
    return "ok" if replies else "no Celery worker answered within 1 s (is `make run` running a worker?)"


def _models() -> str:
    return base_models_health()


PROBES = {
    "database": _database,
    "pgvector": _pgvector,
    "redis": _redis,
    "worker": _worker,
    "inference": inference_health,
    "models": _models,
}


def _run(name: str) -> Check:
    try:
        return Check(name, PROBES[name]())
    except Exception as error:  # a probe reports any failure as text; the page must still render
        return Check(name, f"{type(error).__name__}: {error}"[:300] or type(error).__name__)


def system_health() -> list[Check]:
    return [_run(name) for name in PROBES]
