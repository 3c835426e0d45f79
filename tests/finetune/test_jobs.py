"""Fine-tune jobs in process, on the tiny model: what a job refuses, its defaults, a whole run (metric points,
log, the adapter and its provenance), a NaN loss, cancel and a retry that resumes, the per-host lock, and
beat's sweep of silent and lost jobs. The real-worker runs are in test_job_worker.py."""

import hashlib
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from safetensors.torch import load_file, save_file

from apps.finetune import jobs
from apps.finetune.models import Adapter, AdapterSource, FineTuneJob, JobStatus, MetricPoint
from apps.finetune.selectors import job_progress
from apps.finetune.services import (
    FineTuneJobError,
    finetune_job_cancel,
    finetune_job_create,
    finetune_job_retry,
    finetune_job_run,
    finetune_jobs_fail_stale,
    training_settings_default,
)
from tests.factories import make_assistant, make_user
from tests.finetune.conftest import conversation, session_worker_off_finetune
from tests.finetune.factories import make_base_model, make_dataset_version

CONVERSATIONS = [conversation(i) for i in range(12)]
FAST = {"rank": 4, "alpha": 8, "learning_rate": 1e-2, "batch_size": 3, "max_length": 160}


@pytest.fixture
def tiny(tiny_chat, settings, tmp_path):
    settings.FINETUNE_DIR, settings.FINETUNE_ADAPTERS_DIR = tmp_path / "finetune", tmp_path / "adapters"
    settings.FINETUNE_CANCEL_CHECK_SECONDS = 0
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # no engine: the hot load is logged, not fatal
    owner = make_user("ada")
    base = make_base_model(tiny_chat["root"])
    return {
        "owner": owner,
        "base": base,
        "assistant": make_assistant(owner, base_model=base),
        "hf_dir": tiny_chat["hf_dir"],
        "version": make_dataset_version(owner, records=CONVERSATIONS, hf_dir=tiny_chat["hf_dir"]),
    }


def create(tiny, **kwargs) -> FineTuneJob:
    args = {"owner": tiny["owner"], "dataset_version": tiny["version"], "method": "sft", "assistant": tiny["assistant"]}
    return finetune_job_create(**{**args, "settings": FAST, **kwargs})


@pytest.mark.django_db
def test_a_job_refuses_what_it_cannot_train(tiny):
    other = make_user("eve")
    version = tiny["version"]
    with pytest.raises(FineTuneJobError, match="your own datasets"):
        create(tiny, owner=other, assistant=None)
    with pytest.raises(FineTuneJobError, match="trains with Supervised"):
        create(tiny, method="dpo")
    with pytest.raises(FineTuneJobError, match="Unknown training settings: optimizer"):
        create(tiny, settings={"optimizer": "sgd"})
    with pytest.raises(FineTuneJobError, match="Invalid training settings"):
        create(tiny, settings={"learning_rate": -1.0})
    with pytest.raises(FineTuneJobError, match="your own assistants"):
        create(tiny, assistant=make_assistant(other, base_model=tiny["base"]))
    foreign = Adapter.objects.create(
        owner=other,
        name="theirs",
        source=AdapterSource.UPLOADED,
        base_model=tiny["base"],
        base_model_hash=tiny["base"].content_hash,
        engine_id="theirs",
        path="/nowhere",
        sha256="0" * 64,
    )
    with pytest.raises(FineTuneJobError, match="your own adapters"):
        create(tiny, start_adapter=foreign)
    version.high_findings = 1  # a poisoning-scan hit, not overridden
    version.save()
    with pytest.raises(FineTuneJobError, match="high-severity"):
        create(tiny)
    assert not FineTuneJob.objects.exists()


@pytest.mark.django_db
def test_defaults_fit_the_data_and_chosen_settings_override_them(tiny):
    small = training_settings_default(method="sft", examples=12)
    large = training_settings_default(method="sft", examples=5000)
    assert small.epochs == large.epochs + 1 and small.checkpoint_every < large.checkpoint_every == 20
    assert training_settings_default(method="sft", examples=2).batch_size == 2
    assert training_settings_default(method="dpo", examples=500).learning_rate < large.learning_rate
    job = create(tiny, settings={"rank": 4, "target_modules": ["q_proj", "v_proj"], "epochs": 5})
    assert job.settings["lora"] == {"rank": 4, "alpha": 32.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert job.settings["epochs"] == 5 and job.settings["learning_rate"] == small.learning_rate
    assert (job.status, job.base_model, job.attempts) == (JobStatus.QUEUED, tiny["base"], 0)


@pytest.mark.django_db
def test_a_job_trains_stores_every_point_and_publishes_an_adapter_with_provenance(tiny):
    job = create(tiny)
    assert finetune_job_run(job_id=job.pk) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    steps = job.total_steps
    assert job.status == JobStatus.SUCCEEDED and job.step == steps > 0 and job.finished_at is not None
    train = MetricPoint.objects.filter(job=job, kind="train").order_by("step")
    assert [p.step for p in train] == list(range(1, steps + 1))
    assert {"loss", "epoch", "tokens_per_second", "eta_s", "learning_rate"} <= set(train[0].values)
    assert MetricPoint.objects.filter(job=job, kind="validation").exists()
    adapter = Adapter.objects.get(job=job)
    assert adapter.owner == tiny["owner"] and adapter.dataset_version == tiny["version"]
    assert adapter.base_model == tiny["base"] and adapter.base_model_hash == tiny["base"].content_hash
    assert adapter.config["settings"] == job.settings and adapter.metrics["steps"] == steps
    folder = Path(adapter.path)
    assert folder.parent == jobs.adapters_dir() and folder.name == adapter.engine_id
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert adapter.sha256 == hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert not list((jobs.adapters_dir() / ".staging").iterdir())  # renamed out of the staging folder
    assert not jobs.checkpoint_dir(job).exists()
    log = [line.message for line in job.log_lines.order_by("pk")]
    assert log[0].startswith("Queued") and log[1].startswith("Attempt 1 started")
    assert any(m.startswith("Not loaded into the engine now") for m in log)  # no engine here: not a failure
    # the page's endpoint gives every point back from cursor 0, and nothing after the last one
    progress = job_progress(job=job)
    assert len(progress["points"]) == MetricPoint.objects.filter(job=job).count()
    assert job_progress(job=job, after=progress["after"])["points"] == []
    assert progress["job"]["status"] == "succeeded" and progress["job"]["adapter"]["engine_id"] == adapter.engine_id


@pytest.mark.django_db
def test_a_nan_loss_fails_the_job_with_the_reason(tiny, tmp_path):
    broken = tmp_path / "broken"
    (broken / "hf").mkdir(parents=True)
    for item in tiny["hf_dir"].iterdir():
        (broken / "hf" / item.name).write_bytes(item.read_bytes())
    tensors = load_file(broken / "hf" / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"][1, 2] = float("nan")
    save_file(tensors, broken / "hf" / "model.safetensors", metadata={"format": "pt"})
    job = create(tiny, assistant=make_assistant(tiny["owner"], base_model=make_base_model(broken, name="broken")))
    assert finetune_job_run(job_id=job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "loss became nan at step 1" in job.message
    assert not Adapter.objects.filter(job=job).exists()
    assert job.log_lines.order_by("-pk").first().message == f"Failed: {job.message}"


@pytest.fixture
def own_runner():
    """Jobs queued by a committed transaction stay for this test's runner thread (see session_worker_off_finetune)."""
    with session_worker_off_finetune():
        yield


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_running_job_and_a_retry_resumes_from_its_checkpoint(tiny, own_runner):
    job = create(tiny, settings={**FAST, "epochs": 10})  # 40 steps, a checkpoint every 10
    runner = threading.Thread(target=finetune_job_run, kwargs={"job_id": job.pk})
    runner.start()
    deadline = time.monotonic() + 120
    while not FineTuneJob.objects.filter(pk=job.pk, step__gte=job.settings["checkpoint_every"] + 1).exists():
        assert time.monotonic() < deadline and runner.is_alive(), "the job never got past its first checkpoint"
        time.sleep(0.02)
    finetune_job_cancel(job=job)
    runner.join(60)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.message.startswith("Cancelled at step")
    stopped = job.step
    assert 0 < stopped < job.total_steps and (jobs.checkpoint_dir(job) / "checkpoint" / "state.json").is_file()
    points_before = MetricPoint.objects.filter(job=job, kind="train").count()
    assert points_before == stopped

    with pytest.raises(FineTuneJobError, match="Only a queued or running"):
        finetune_job_cancel(job=job)
    finetune_job_retry(job=job)
    assert finetune_job_run(job_id=job.pk) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    resumed = [m for m in job.log_lines.values_list("message", flat=True) if m.startswith("resumed from")]
    assert len(resumed) == 1 and 0 < int(resumed[0].rsplit(" ", 1)[1]) <= stopped
    assert job.attempts == 2 and job.step == job.total_steps
    # every step's point, once: the resumed steps replaced their earlier points
    assert [p.step for p in MetricPoint.objects.filter(job=job, kind="train").order_by("step")] == list(
        range(1, job.total_steps + 1)
    )
    assert not [m for m in job.log_lines.values_list("message", flat=True) if m.startswith("No checkpoint")]


@pytest.mark.django_db
def test_a_retry_without_a_checkpoint_says_it_starts_over(tiny):
    # The first attempt failed on another machine: its checkpoint is not here.
    job = create(tiny)
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, attempts=1, step=12)
    finetune_job_retry(job=job)
    assert finetune_job_run(job_id=job.pk) == JobStatus.SUCCEEDED
    log = list(job.log_lines.values_list("message", flat=True))
    assert [m for m in log if m.startswith("No checkpoint on this worker")] and not [
        m for m in log if m.startswith("resumed from")
    ]


@pytest.mark.django_db
def test_a_job_waits_while_this_machine_trains_another(tiny):
    job = create(tiny)
    with jobs._machine_lock() as locked:
        assert locked
        assert finetune_job_run(job_id=job.pk) == "busy"
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.attempts == 0


@pytest.mark.django_db
def test_beat_fails_silent_running_jobs_and_lost_queued_ones_as_retryable(tiny, settings):
    settings.FINETUNE_STALE_SECONDS, settings.FINETUNE_QUEUED_LOST_SECONDS = 60, 600
    long_ago = timezone.now() - timedelta(hours=1)
    silent = create(tiny)
    FineTuneJob.objects.filter(pk=silent.pk).update(status=JobStatus.RUNNING, heartbeat_at=long_ago, attempts=1)
    waiting = create(tiny)
    FineTuneJob.objects.filter(pk=waiting.pk).update(heartbeat_at=long_ago)
    fresh = create(tiny)
    # while a job runs, an old queued one is only waiting its turn; the silent one is failed first
    alive = create(tiny)
    FineTuneJob.objects.filter(pk=alive.pk).update(status=JobStatus.RUNNING, heartbeat_at=timezone.now(), attempts=1)
    assert finetune_jobs_fail_stale() == 1
    statuses = dict(FineTuneJob.objects.values_list("pk", "status"))
    assert statuses[silent.pk] == JobStatus.FAILED and statuses[waiting.pk] == JobStatus.QUEUED
    silent.refresh_from_db()
    assert silent.message == jobs.WORKER_LOST and silent.finished_at is not None
    # once nothing runs (and nothing ended lately), the old queued job lost its message
    FineTuneJob.objects.filter(pk=alive.pk).update(status=JobStatus.QUEUED, heartbeat_at=timezone.now())
    FineTuneJob.objects.filter(pk=silent.pk).update(finished_at=long_ago)
    assert finetune_jobs_fail_stale() == 1
    waiting.refresh_from_db()
    assert (waiting.status, waiting.message) == (JobStatus.FAILED, jobs.QUEUE_LOST)
    assert FineTuneJob.objects.get(pk=fresh.pk).status == JobStatus.QUEUED
    finetune_job_retry(job=waiting)  # both are retryable
    finetune_job_retry(job=silent)
    assert set(FineTuneJob.objects.values_list("status", flat=True)) == {JobStatus.QUEUED}


@pytest.mark.django_db
def test_a_superseded_attempt_stops_without_writing(tiny):
    """A worker that beat took for dead (its job failed, then retried) stops at its next write."""
    job = create(tiny, settings={**FAST, "epochs": 3})
    jobs._claim(job.pk)
    # beat fails it and the owner retries: the attempt that was running no longer owns the job
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED, attempts=2)
    stale_attempt = FineTuneJob.objects.get(pk=job.pk)
    stale_attempt.status, stale_attempt.attempts = JobStatus.RUNNING, 1
    with pytest.raises(jobs._Superseded):
        jobs._run_or_fail(stale_attempt)
    assert not MetricPoint.objects.filter(job=job).exists()
    assert FineTuneJob.objects.get(pk=job.pk).status == JobStatus.QUEUED
