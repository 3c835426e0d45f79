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
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

import httpx
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def real_models(django_db_setup, django_db_blocker) -> dict[tuple[str, str], Path]:
    """The real models' artifact directories, registered in the test database."""
    from django.db import connections

    from apps.registry.services import base_models_bootstrap

    with django_db_blocker.unblock():
        connections.close_all()  # a connection opened before django_db_setup still points at the dev DB
        results = base_models_bootstrap(progress=_stderr_progress)
    return {(r.spec.name, r.spec.variant): Path(r.path) for r in results}


@pytest.fixture(scope="session")
def inference_server(real_models):
    """`python -m inference.server` with the real SmolLM2 (q4) and MiniLM; the test process and the
    test Celery worker are pointed at it."""
    from django.conf import settings

    port = free_port()
    env = {**os.environ, "INFERENCE_MAX_SEQS": "8", "INFERENCE_CONTEXT": "1024", "INFERENCE_API_KEY": ""}
    log = open(Path(os.environ["ATELIER_VAR_DIR"]) / "inference-test-server.log", "w")  # noqa: SIM115
    argv = [sys.executable, "-m", "inference.server", "--port", str(port), "--models-root", str(settings.MODELS_DIR)]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    previous = settings.INFERENCE_URL
    try:
        wait_for_http(f"{base}/health", process, timeout=180, what=f"The inference server (log: {log.name})")
        settings.INFERENCE_URL = base
        yield base
    finally:
        settings.INFERENCE_URL = previous
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, inference_server):
    """A real `celery worker` process, consuming the product's queues against the test database."""
    from django.db import connection

    from config.celery import app, worker_argv

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(connection.settings_dict),
        "INFERENCE_URL": inference_server,
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
    from django.conf import settings
    from django.db import connection

    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "INFERENCE_URL": inference_server,
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set by `browser` for this process only; the app must not have it
    log = open(Path(os.environ["ATELIER_VAR_DIR"]) / "web-test-server.log", "w")  # noqa: SIM115
    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        # /healthz answers 503 while a part is unhealthy; any answer at all means the app is serving.
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The test web server exited with {process.returncode}; see {log.name}")
            try:
                httpx.get(f"{base}/healthz", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"The test web server did not answer {base}/healthz; see {log.name}") from None
                time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(web_server):
    """Debian's headless chromium, driven by Playwright (which never downloads a browser here).

    Module-scoped: while Playwright is open, its event loop counts as running in this thread, so any
    later test calling asyncio.run() (the engine's scheduler tests) would fail if it outlived the module.

    Playwright's sync API marks an asyncio loop as running in this thread for as long as it is open, and
    Django then refuses every ORM call (SynchronousOnlyOperation), the test's own and pytest-django's
    flush alike. So DJANGO_ALLOW_ASYNC_UNSAFE is set while the browser is open. It depends on
    `web_server` so that the web server, the Celery worker and the inference server are all started
    first: their environment is copied from this process and must not carry the flag.
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
