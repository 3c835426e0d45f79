"""Where fine-tunes run: their own queue, consumed by exactly one worker of concurrency 1 in `make run` and in
compose, and beat's sweep on the schedule."""

import yaml
from django.conf import settings

from apps.core.management.commands.serve import Command
from tests.conftest import REPO_ROOT


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_job_task_goes_to_the_finetune_queue_and_beat_sweeps_stale_jobs():
    assert settings.CELERY_TASK_ROUTES["finetune.job_run"] == {"queue": "finetune"}
    assert {"task": "finetune.jobs_fail_stale", "schedule": 60.0} in settings.CELERY_BEAT_SCHEDULE.values()
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1


def test_make_run_starts_one_finetune_worker_of_concurrency_one():
    programs = Command()._programs("127.0.0.1", 8000)
    workers = {p.name: p.argv for p in programs if "worker" in p.argv}
    consuming = {name: argv for name, argv in workers.items() if "finetune" in _option(argv, "-Q").split(",")}
    assert list(consuming) == ["finetune-worker"]
    assert _option(consuming["finetune-worker"], "-Q") == "finetune"
    assert _option(consuming["finetune-worker"], "--concurrency") == "1"


def test_compose_runs_fine_tunes_on_their_own_worker_of_concurrency_one():
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    command = services["finetune-worker"]["command"]
    assert _option(command, "-Q") == "finetune" and _option(command, "--concurrency") == "1"
    assert _option(command, "--prefetch-multiplier") == "1" and "healthcheck" in services["finetune-worker"]
    assert "finetune" not in _option(services["worker"]["command"], "-Q")
    assert services["web"]["environment"]["ATELIER_FINETUNE_DIR"].startswith("/var/lib/atelier/models/")
