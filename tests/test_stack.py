"""`make run` in miniature: `manage.py serve` on a fresh var dir brings the whole product up, serves
the status page green, and a Ctrl-C stops every process it started."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from django.conf import settings

from tests.conftest import REPO_ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
ADMIN_PASSWORD = "stack-test-admin-passphrase"


def _processes_using(path: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = process.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if path in cmdline or environ.get("ATELIER_VAR_DIR") == path:
            found.append(process)
    return found


def test_serve_starts_everything_green_and_ctrl_c_stops_it(tmp_path, models_ready):
    var_dir, port, inference_port = str(tmp_path / "var"), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        ATELIER_VAR_DIR=var_dir,
        ATELIER_MODELS_DIR=str(settings.MODELS_DIR),
        ATELIER_PORT=str(port),
        INFERENCE_URL=f"http://127.0.0.1:{inference_port}",
        ATELIER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CELERY_CONCURRENCY="1",
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        health, deadline = {}, time.monotonic() + 180
        while time.monotonic() < deadline and not (health.get("worker") == health.get("inference") == "ok"):
            assert process.poll() is None, "".join(output)
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{base}/healthz", timeout=5).json()
            time.sleep(1)
        for part in ("database", "pgvector", "redis", "worker", "inference", "models"):
            assert health.get(part) == "ok", (part, health, "".join(output)[-3000:])
        answer = httpx.post(
            f"http://127.0.0.1:{inference_port}/v1/completions",
            json={"model": "smollm2-135m-instruct", "prompt": "Hello", "max_tokens": 3},
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1

        # Log in as the admin the command ensured, and see the status page.
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as browser:
            browser.get("/accounts/login/")
            response = browser.post(
                "/accounts/login/",
                data={
                    "username": "admin",
                    "password": ADMIN_PASSWORD,
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                },
                headers={"Referer": f"{base}/accounts/login/"},
            )
            assert response.status_code == 302, response.text[:500]
            status_page = browser.get("/status")
            assert status_page.status_code == 200 and "pgvector" in status_page.text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    reader.join(5)
    log = "".join(output)
    assert process.returncode == 0, log[-3000:]
    # The models were already built: this start only verified them.
    assert len(re.findall(r": verified at ", log)) == len(models_ready), log[-3000:]
    assert "Atelier stopped." in log
    time.sleep(1)
    assert _processes_using(var_dir) == []  # web, worker, inference, redis and postgres are all gone
