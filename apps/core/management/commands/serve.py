"""`make run`: embedded data services, migrations, models, admin account, then the supervised processes."""

import os
import sys
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.core.supervisor import CrashLoop, Program, Supervisor
from config.celery import QUEUES, beat_argv, worker_argv


def _wait_for_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 (our own loopback URL)
            return True
        except OSError as error:
            if getattr(error, "code", None):  # an HTTP error status still means the server answers
                return True
            time.sleep(0.3)
    return False


class Command(BaseCommand):
    help = "Start the whole product (web, worker; embedded Postgres and Redis unless configured) and supervise it."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("ATELIER_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("ATELIER_PORT", "8000")))
        parser.add_argument("--skip-bootstrap", action="store_true", help="Do not build or verify models.")

    def handle(self, *args, host: str, port: int, skip_bootstrap: bool, **options):
        # manage.py already runs the embedded Postgres and Redis around this command.
        started = time.monotonic()
        try:
            call_command("migrate", interactive=False, verbosity=1)
            if not skip_bootstrap:
                call_command("bootstrap_models")
            call_command("ensure_admin")
            self.stdout.write("Starting web, workers, beat and inference …")
            threading.Thread(target=self._announce_when_up, args=(host, port, started), daemon=True).start()
            Supervisor(self._programs(host, port)).run()
        except CrashLoop as error:
            raise CommandError(str(error)) from error
        finally:
            self.stdout.write("Atelier stopped.")

    def _programs(self, host: str, port: int) -> list[Program]:
        python = sys.executable
        settings_env = {"DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.local")}
        concurrency = os.environ.get("CELERY_CONCURRENCY", "2")
        # Answers stream concurrently up to what the engine batches (INFERENCE_MAX_SEQS, 16 by default).
        chat_concurrency = int(os.environ.get("CHAT_CONCURRENCY") or os.environ.get("INFERENCE_MAX_SEQS") or 16)
        programs = []
        inference = urlsplit(settings.INFERENCE_URL)
        if inference.hostname in ("127.0.0.1", "localhost"):  # otherwise INFERENCE_URL names servers run elsewhere
            programs.append(
                Program(
                    "inference",
                    [
                        python,
                        "-m",
                        "inference.server",
                        "--host",
                        inference.hostname,
                        "--port",
                        str(inference.port or 80),
                        "--models-root",
                        str(settings.MODELS_DIR),
                    ],
                    {},
                )
            )
        return [
            *programs,
            Program(
                "worker",
                worker_argv(
                    concurrency=int(concurrency),
                    name="worker@%h",
                    queues=tuple(q for q in QUEUES if q not in ("chat", "finetune")),
                ),
                settings_env,
            ),
            # One training at a time per machine (the job also holds a per-host lock): a second would halve
            # both, and a fine-tune takes every core. Prefetch 1 and acks_late come from the Celery settings.
            Program(
                "finetune-worker",
                worker_argv(concurrency=1, name="finetune@%h", queues=("finetune",)),
                settings_env,
            ),
            Program("beat", beat_argv(schedule_file=str(settings.VAR_DIR / "celerybeat-schedule")), settings_env),
            Program(
                "chat-worker",
                worker_argv(concurrency=chat_concurrency, name="chat@%h", queues=("chat",), pool="threads"),
                settings_env,
            ),
            Program(
                "web",
                [
                    python,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--lifespan",
                    "off",
                ],
                settings_env,
            ),
        ]

    def _announce_when_up(self, host: str, port: int, started: float) -> None:
        if _wait_for_http(f"http://{host}:{port}/healthz", timeout=60):
            self.stdout.write(
                self.style.SUCCESS(
                    f"Atelier is serving at http://{host}:{port}/ ({time.monotonic() - started:.1f} s after start). "
                    "Press Ctrl-C to stop."
                )
            )
