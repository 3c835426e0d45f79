"""The test run stands on the real parts: embedded Postgres+pgvector and Redis (or the ones named by
DATABASE_URL / REDIS_URL), a real Celery worker process, and the real exported models.

A skipped test fails the run: every test here needs a real service, and a skip would hide that one
was missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_services = ExitStack()


def pytest_configure(config):
    from django.conf import settings

    from config import embedded

    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)  # importing test settings also chose var/test
    _services.enter_context(embedded.running_services())


def pytest_unconfigure(config):
    _services.close()


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter.write_line(
            f"{len(skipped)} test(s) were skipped. Every test needs its real service; a skip is a failure.",
            red=True,
            bold=True,
        )


def _stderr_progress(spec, message: str, fraction: float) -> None:
    # pytest captures sys.stderr per test; the real terminal still shows a first-time build's progress.
    print(f"  [{spec.name} {spec.variant}] {fraction:4.0%} {message}", file=sys.__stderr__, flush=True)


@pytest.fixture
def models_ready(django_db_setup, django_db_blocker):
    """The real models, registered in the test DB: built on the first run ever (minutes), afterwards only
    verified (about a second). Function-scoped because transactional tests flush the tables."""
    from apps.registry.services import base_models_bootstrap

    with django_db_blocker.unblock():
        return {(r.spec.name, r.spec.variant): r for r in base_models_bootstrap(progress=_stderr_progress)}


def database_url(settings_dict: dict) -> str:
    """A URL for the database Django is connected to (the test database, once it exists)."""
    user = quote(settings_dict["USER"] or "")
    password = quote(settings_dict["PASSWORD"] or "")
    credentials = f"{user}:{password}@" if password else f"{user}@"
    host, port, name = settings_dict["HOST"] or "", settings_dict["PORT"] or "", settings_dict["NAME"]
    if host.startswith("/"):
        return f"postgresql://{credentials}/{name}?host={host}" + (f"&port={port}" if port else "")
    return f"postgresql://{credentials}{host}{':' + str(port) if port else ''}/{name}"


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup):
    """A real `celery worker` process, consuming the product's queues against the test database."""
    from django.db import connection

    from config.celery import app, worker_argv

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(connection.settings_dict),
    }
    log = open(Path(os.environ["ATELIER_VAR_DIR"]) / "celery-test-worker.log", "w")  # noqa: SIM115
    argv = worker_argv(concurrency=1, name=f"test-{os.getpid()}@%h")
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while not app.control.ping(timeout=0.5, destination=[f"test-{os.getpid()}@{os.uname().nodename}"]):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The test Celery worker did not come up; see {log.name}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
