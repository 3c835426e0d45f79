"""The test run stands on the real parts: embedded Postgres+pgvector and Redis (or the ones named by
DATABASE_URL / REDIS_URL), a real Celery worker process, and the real exported models.

A skipped test fails the run: every test here needs a real service, and a skip would hide that one
was missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import pytest

if TYPE_CHECKING:
    from apps.registry.models import BaseModel

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


def _bootstrap(django_db_blocker) -> dict:
    """The real models registered in the test DB, by (name, variant): built on the first run ever
    (minutes), afterwards only verified (about a second)."""
    from apps.registry.services import base_models_bootstrap

    with django_db_blocker.unblock():
        return {(r.spec.name, r.spec.variant): r for r in base_models_bootstrap(progress=_stderr_progress)}


@pytest.fixture
def models_ready(django_db_setup, django_db_blocker):
    """Function-scoped because transactional tests flush the tables."""
    return _bootstrap(django_db_blocker)


@pytest.fixture
def stub_chat_model() -> BaseModel:
    """A registered, ready chat model with no files behind it: enough for everything but generation."""
    from apps.registry.models import BaseModel

    return BaseModel.objects.create(
        name="tiny-chat",
        variant="q4",
        kind=BaseModel.Kind.CHAT,
        status=BaseModel.Status.READY,
        content_hash="0" * 64,
        path="/nonexistent/tiny-chat",
        perplexity=12.5,
        source_package="tests",
    )


def database_url(settings_dict: dict) -> str:
    """A URL for the database Django is connected to (the test database, once it exists)."""
    user = quote(settings_dict["USER"] or "")
    password = quote(settings_dict["PASSWORD"] or "")
    credentials = f"{user}:{password}@" if password else f"{user}@"
    host, port, name = settings_dict["HOST"] or "", settings_dict["PORT"] or "", settings_dict["NAME"]
    if host.startswith("/"):
        return f"postgresql://{credentials}/{name}?host={host}" + (f"&port={port}" if port else "")
    return f"postgresql://{credentials}{host}{':' + str(port) if port else ''}/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, *, timeout: float, what: str, any_status=False) -> None:
    """Until `url` answers below 500 (with any_status: answers at all), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        try:
            status = httpx.get(url, timeout=5).status_code
        except httpx.HTTPError:
            status = None
        if status is not None and (any_status or status < 500):
            return
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def stack_env(**extra: str) -> dict[str, str]:
    """The environment of a product process (web, worker) that runs against this test run's database,
    Redis and inference server."""
    from django.conf import settings
    from django.db import connection

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "INFERENCE_URL": settings.INFERENCE_URL,
        **extra,
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set by `browser` for this process only
    return env


@contextmanager
def service_process(name: str, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A subprocess logging to var dir/<name>.log, terminated (then killed) on exit."""
    log_path = Path(os.environ["ATELIER_VAR_DIR"]) / f"{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        process.log_path = log_path
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def real_models(django_db_setup, django_db_blocker) -> dict[tuple[str, str], Path]:
    """The real models' artifact directories, registered in the test database."""
    from django.db import connections

    with django_db_blocker.unblock():
        connections.close_all()  # a connection opened before django_db_setup still points at the dev DB
    return {key: Path(result.path) for key, result in _bootstrap(django_db_blocker).items()}


@pytest.fixture(scope="session")
def inference_server(real_models):
    """`python -m inference.server` with the real SmolLM2 (q4) and MiniLM; the test process, the test
    Celery worker and the test web server are pointed at it."""
    from django.conf import settings

    port = free_port()
    env = {**os.environ, "INFERENCE_MAX_SEQS": "8", "INFERENCE_CONTEXT": "1024", "INFERENCE_API_KEY": ""}
    argv = [sys.executable, "-m", "inference.server", "--port", str(port), "--models-root", str(settings.MODELS_DIR)]
    base, previous = f"http://127.0.0.1:{port}", settings.INFERENCE_URL
    with service_process("inference-test-server", argv, env) as process:
        wait_for_http(f"{base}/health", process, timeout=180, what=f"The inference server ({process.log_path})")
        settings.INFERENCE_URL = base
        try:
            yield base
        finally:
            settings.INFERENCE_URL = previous


@contextmanager
def celery_worker(
    name: str, *, queues: tuple[str, ...] | None = None, env: dict[str, str] | None = None, concurrency: int = 1
) -> Iterator[subprocess.Popen]:
    """A real `celery worker` process against the test database (with `env` on top), up once it answers a ping."""
    from config.celery import QUEUES, app, worker_argv

    argv = worker_argv(concurrency=concurrency, name=f"{name}@%h", queues=queues or QUEUES)
    with service_process(name, argv, stack_env(**(env or {}))) as process:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5, destination=[f"{name}@{os.uname().nodename}"]):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The Celery worker {name} did not come up; see {process.log_path}")
        yield process


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, inference_server):
    """A real `celery worker` process, consuming the product's queues against the test database."""
    with celery_worker(f"test-{os.getpid()}") as process:
        yield process


# Real-browser tests: the ASGI web app as a subprocess, and Debian's chromium driven by Playwright.

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags, Chromium's own connections are refused by the closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def web_server(celery_worker_process, inference_server):
    """The real web app (`uvicorn config.asgi:application`) on a free port, against the test database,
    the test Redis, the test Celery worker and the test inference server. Yields its base URL.

    The server is another process with its own database connection: it sees only committed rows. Tests
    that use it must be `@pytest.mark.django_db(transaction=True)`; in a plain `django_db` test the data
    stays in the test's open transaction and the server never sees it.
    """
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    base = f"http://127.0.0.1:{port}"
    with service_process("web-test-server", argv, stack_env()) as process:
        # /healthz answers 503 while a part is unhealthy; any answer at all means the app is serving.
        wait_for_http(
            f"{base}/healthz", process, timeout=60, what=f"The web server ({process.log_path})", any_status=True
        )
        yield base


@pytest.fixture(scope="module")
def browser(web_server):
    """Debian's headless chromium, driven by Playwright (which never downloads a browser here).

    Playwright's sync API marks an asyncio loop as running in this thread for as long as it is open. So:
    - it is module-scoped, or a later test calling asyncio.run() (the engine's scheduler tests) fails;
    - Django refuses every ORM call meanwhile (SynchronousOnlyOperation), the test's own and
      pytest-django's flush alike, so DJANGO_ALLOW_ASYNC_UNSAFE is set while it is open. The product
      processes never get the flag: stack_env() drops it.
    """
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def artifacts_dir(request) -> Path:
    """var/test-artifacts/<test name>/, emptied at the start of the test: where it saves screenshots."""
    import re
    import shutil

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = REPO_ROOT / "var" / "test-artifacts" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
