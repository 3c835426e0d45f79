"""Running one fine-tune job, in a worker on the `finetune` queue: claim -> train -> publish the adapter.

The trainer (training.py) is plain PyTorch; this wraps it for the product:
- **One training per machine.** The worker runs with concurrency 1, and the job also takes an exclusive
  per-host file lock (flock: the kernel frees it when the process dies, even by SIGKILL) before it claims
  anything. A job that finds the lock held stays queued and its task tries again later, so two jobs never
  train side by side, whatever the worker's settings or however many workers share the machine.
- **Claim** under the job's row lock: a queued job, or a running one whose heartbeat went stale (the
  redelivery of a killed worker's message; acks_late). Each claim is a new attempt; the attempt number
  is what every later write checks, so a worker that beat wrongly took for dead stops at its next write
  instead of writing over a retry.
- **Progress.** Every metrics point is stored (MetricPoint, update_or_create on job/kind/step, so a resumed
  run rewriting a step replaces it), with the job's step, total and heartbeat in the same transaction;
  status points and validations go to the log. `should_cancel` reads the cancel flag at most every
  FINETUNE_CANCEL_CHECK_SECONDS and is a heartbeat too, so a long DPO reference pass stays alive.
- **Checkpoints** live in FINETUNE_DIR/jobs/<id>/ and survive failure, cancel and a killed worker: a retry
  resumes from the last one (same weights, optimizer moments, data order; training.py checks that the
  checkpoint belongs to this job). They are deleted when the job succeeds.
- **Output.** The adapter is written into FINETUNE_ADAPTERS_DIR/.staging/ and renamed into
  FINETUNE_ADAPTERS_DIR/<engine id>/ (one filesystem: it appears whole or not at all, like the registry's
  models). The `Adapter` row records its provenance (dataset version, base model and the hash of the weights
  trained on, the configuration, the metrics). Then it is loaded into the engine hot (POST /v1/adapters).
  An engine that is down or restarted later is no failure: the inference client loads the adapter again
  the first time a request names it.
- **Failures** (TrainingFailed: NaN loss, out of memory; TrainingError: bad data or base model) end the job
  failed with the trainer's reason. A killed worker leaves the job running with a stale heartbeat, which
  beat's `finetune_jobs_fail_stale` turns into failed and retryable; it also fails a job that stayed queued
  while no worker trained anything for FINETUNE_QUEUED_LOST_SECONDS (its queue message was lost).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from apps.finetune.models import Adapter, AdapterSource, FineTuneJob, JobLogLine, JobStatus, Method, MetricPoint
from apps.finetune.selectors import base_model_training_row
from apps.finetune.training_settings import LoraSettings, TrainingSettings
from apps.loop.drafts import loop_draft_create
from inference.adapters import ADAPTER_WEIGHTS
from inference.export import sha256_file

log = logging.getLogger(__name__)

WORKER_LOST = "The worker stopped while training (killed, or its machine restarted). Retry to resume."
QUEUE_LOST = "No worker took this job (its queue message was lost, or no fine-tune worker runs). Retry it."
INTERNAL_ERROR = "An internal error stopped the job; the worker's log has the details. Retry it."
CANCELLED_QUEUED = "Cancelled before it started."
METRIC_KINDS = ("train", "validation")


class _Superseded(Exception):
    """This attempt no longer owns the job: beat failed it as silent (and it may have been retried meanwhile).
    It stops without writing anything more."""


# --- places --------------------------------------------------------------------------------------------


def adapters_dir() -> Path:
    return settings.FINETUNE_ADAPTERS_DIR


def adapter_engine_id_new(*, name: str) -> str:
    """A new id the engine knows an adapter by, also its folder's name under adapters_dir(): a slug of its name
    and random hex, so it says nothing about other adapters."""
    return f"ft-{slugify(name)[:40] or 'adapter'}-{secrets.token_hex(4)}"


def checkpoint_dir(job: FineTuneJob) -> Path:
    return settings.FINETUNE_DIR / "jobs" / str(job.pk)


def training_settings_to_dict(settings: TrainingSettings) -> dict:
    """A job's settings as stored (FineTuneJob.settings)."""
    data = asdict(settings)
    data["lora"]["target_modules"] = list(data["lora"]["target_modules"])
    return data


def training_settings_from_dict(data: dict) -> TrainingSettings:
    lora = dict(data.get("lora") or {})
    lora["target_modules"] = tuple(lora.get("target_modules", LoraSettings().target_modules))
    return TrainingSettings(**{**data, "lora": LoraSettings(**lora)})


# --- the task body -------------------------------------------------------------------------------------


def finetune_job_run(*, job_id: int) -> str:
    """Run one job (the `finetune` task's body); returns the status it ended in, "busy" when this machine
    is already training (the task tries again later), "skipped" when there was nothing to take, or
    "superseded" when the job was taken from this attempt meanwhile."""
    with _machine_lock() as locked:
        if not locked:
            return "busy"
        job = _claim(job_id)
        if job is None:
            return "skipped"
        try:
            return _run_or_fail(job)
        except _Superseded:
            log.warning("fine-tune job %s: attempt %s was superseded; it stops", job.pk, job.attempts)
            return "superseded"


@contextmanager
def _machine_lock() -> Iterator[bool]:
    """An exclusive, non-blocking flock per host; yields whether it was taken."""
    path = settings.FINETUNE_DIR / "locks" / f"{socket.gethostname()}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _claim(job_id: int) -> FineTuneJob | None:
    stale_before = timezone.now() - timedelta(seconds=settings.FINETUNE_STALE_SECONDS)
    with transaction.atomic():
        job = (
            FineTuneJob.objects.select_for_update(of=("self",))
            .select_related("dataset_version__dataset", "base_model", "start_adapter", "owner")
            .filter(Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, heartbeat_at__lt=stale_before), pk=job_id)
            .first()
        )
        if job is None:
            return None
        now = timezone.now()
        if job.cancel_requested:
            job.status, job.finished_at, job.message = JobStatus.CANCELLED, now, CANCELLED_QUEUED
            job.save(update_fields=["status", "finished_at", "message"])
            return None
        job.status, job.attempts, job.heartbeat_at, job.message = JobStatus.RUNNING, job.attempts + 1, now, ""
        job.worker = f"{socket.gethostname()}:{os.getpid()}"[:200]
        job.started_at = job.started_at or now
        job.save(update_fields=["status", "attempts", "heartbeat_at", "message", "worker", "started_at"])
        JobLogLine.objects.create(job=job, message=f"Attempt {job.attempts} started on {job.worker}.")
    return job


def _run_or_fail(job: FineTuneJob) -> str:
    from apps.finetune.training import TrainingCancelled, TrainingError

    progress = _Progress(job)
    try:
        _train_and_publish(job, progress)
    except TrainingCancelled as error:
        if progress.superseded:
            raise _Superseded from error
        _end(job, status=JobStatus.CANCELLED, message=f"Cancelled at step {progress.step}.")
    except TrainingError as error:  # TrainingFailed (NaN, out of memory) included: the trainer's reason
        _end(job, status=JobStatus.FAILED, message=str(error))
    except _Superseded:
        raise
    except Exception:
        log.exception("fine-tune job %s failed", job.pk)
        _end(job, status=JobStatus.FAILED, message=INTERNAL_ERROR)
        raise
    return job.status  # _set keeps the object in step with its row, and raises once the job is not ours


def _train_and_publish(job: FineTuneJob, progress: _Progress) -> None:
    import torch  # here, not at the top: the web app imports this module and never trains

    from apps.finetune.training import TrainingError, checkpoint_path, train_dpo, train_sft

    if settings.FINETUNE_TORCH_THREADS:
        torch.set_num_threads(settings.FINETUNE_TORCH_THREADS)
    trained_on = base_model_training_row(base_model=job.base_model)
    if trained_on is None:
        raise TrainingError(f"{job.base_model} has no trainable weights on this machine")
    examples = list(job.dataset_version.examples.order_by("index").values_list("record", flat=True))
    if job.attempts > 1 and checkpoint_path(checkpoint_dir(job)) is None:
        # Said out loud: a retry is expected to resume (the page promised it), and this one cannot.
        _log(
            job,
            "No checkpoint on this worker (the last attempt ran on another machine, or stopped before its "
            "first checkpoint): this attempt starts from step 0.",
        )
    staging = adapters_dir() / ".staging" / f"job-{job.pk}-attempt-{job.attempts}"
    shutil.rmtree(staging, ignore_errors=True)
    run = {
        "base_model_dir": Path(trained_on.path) / "hf",
        "examples": examples,
        "out_dir": staging,
        "settings": training_settings_from_dict(job.settings),
        "checkpoint_dir": checkpoint_dir(job),
        "on_metrics": progress.on_metrics,
        "should_cancel": progress.should_cancel,
    }
    if job.method == Method.DPO:
        reference = Path(job.start_adapter.path) if job.start_adapter else None
        result = train_dpo(reference_adapter_dir=reference, **run)
    else:
        result = train_sft(**run)
    _publish(job, result=result, staging=staging, trained_on=trained_on)


def _publish(job: FineTuneJob, *, result, staging: Path, trained_on) -> None:
    """Rename the staged adapter into place, record it and end the job (one transaction, only while this
    attempt owns the job), then load it into the engine."""
    from apps.core.inference_client import InferenceError, inference_adapter_load

    version = job.dataset_version
    name = f"{version.dataset.name} v{version.number} · job {job.pk}"[:100]
    engine_id = adapter_engine_id_new(name=name)
    final = adapters_dir() / engine_id
    staging.rename(final)
    metrics = {
        "steps": result.steps,
        "epochs": result.epochs_completed,
        "train_loss": result.train_loss,
        "validation": result.validation,
        "tokens_per_second": result.tokens_per_second,
        "timings": result.timings,
        "device": result.device,
        "precision": result.precision,
    }
    config = {
        "method": job.method,
        "settings": job.settings,
        "trained_on": {"name": trained_on.name, "variant": trained_on.variant, "content_hash": trained_on.content_hash},
        "start_adapter": job.start_adapter.engine_id if job.start_adapter else None,
    }
    try:
        with transaction.atomic():
            _own(job)
            adapter = Adapter.objects.create(
                owner=job.owner,
                name=name,
                source=AdapterSource.TRAINED,
                base_model=job.base_model,
                base_model_hash=trained_on.content_hash,
                job=job,
                dataset_version=version,
                engine_id=engine_id,
                path=str(final),
                sha256=sha256_file(final / ADAPTER_WEIGHTS),
                config=config,
                metrics=metrics,
            )
            _set(job, status=JobStatus.SUCCEEDED, finished_at=timezone.now(), message="")
            _log(job, f"Succeeded: adapter {adapter.engine_id} ({result.steps} steps).")
            # "Improve this assistant": the adapter becomes a draft of the version it improves (apps/loop/drafts.py).
            draft = loop_draft_create(job=job, adapter=adapter)
            if draft is not None:
                _log(job, f"Draft version {draft.number} of {draft.assistant.slug} made; its owner publishes it.")
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    shutil.rmtree(checkpoint_dir(job), ignore_errors=True)
    try:
        inference_adapter_load(adapter_id=engine_id, path=str(final))
        _log(job, f"Loaded into the engine as {engine_id}.")
    except InferenceError as error:
        _log(job, f"Not loaded into the engine now ({error}); it loads the first time a request names it.")


# --- progress ------------------------------------------------------------------------------------------


class _Progress:
    """The trainer's on_metrics and should_cancel for one attempt of a job."""

    def __init__(self, job: FineTuneJob) -> None:
        self.job = job
        self.step = job.step
        self.superseded = False
        self.last_check = time.monotonic()

    def on_metrics(self, point: dict) -> None:
        kind = point["kind"]
        if kind not in METRIC_KINDS:  # a status point: the data is ready, a resume, the reference pass
            with transaction.atomic():
                _own(self.job)
                _set(self.job)
                _log(self.job, point["message"])
            return
        values = {name: value for name, value in point.items() if name not in ("kind", "step")}
        with transaction.atomic():
            _own(self.job)
            MetricPoint.objects.update_or_create(
                job=self.job, kind=kind, step=point["step"], defaults={"values": values}
            )
            if kind == "train":
                self.step = point["step"]
                _set(self.job, step=point["step"], total_steps=point["total_steps"])
            else:
                _set(self.job)
                _log(self.job, f"Validation loss {point['loss']:.4f} at step {point['step']}.")

    def should_cancel(self) -> bool:
        """True when the owner asked to cancel, or when this attempt lost the job (then `superseded`)."""
        now = time.monotonic()
        if now - self.last_check < settings.FINETUNE_CANCEL_CHECK_SECONDS:
            return False
        self.last_check = now
        try:
            with transaction.atomic():
                cancel = _own(self.job)
                _set(self.job)
        except _Superseded:
            self.superseded = True
            return True
        return cancel


def _own(job: FineTuneJob) -> bool:
    """Lock the job's row (inside a transaction) and check this attempt still owns it; raises _Superseded
    otherwise. Returns whether the owner asked to cancel."""
    state = (
        FineTuneJob.objects.select_for_update()
        .filter(pk=job.pk)
        .values("status", "attempts", "cancel_requested")
        .first()
    )
    if state is None or state["status"] != JobStatus.RUNNING or state["attempts"] != job.attempts:
        raise _Superseded
    return state["cancel_requested"]


def _set(job: FineTuneJob, **fields) -> None:
    """Save `fields` and the heartbeat, only while this attempt owns the job."""
    fields["heartbeat_at"] = timezone.now()
    owned = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts)
    if not owned.update(**fields):
        raise _Superseded
    for name, value in fields.items():
        setattr(job, name, value)


def _log(job: FineTuneJob, message: str) -> None:
    JobLogLine.objects.create(job=job, message=message[:2000])


def _end(job: FineTuneJob, *, status: str, message: str) -> None:
    with transaction.atomic():
        _own(job)
        _set(job, status=status, message=message[:2000], finished_at=timezone.now())
        _log(job, f"{JobStatus(status).label}: {message}")
    log.info("fine-tune job %s ended %s: %s", job.pk, status, message)


# --- beat ----------------------------------------------------------------------------------------------


def finetune_jobs_fail_stale() -> int:
    """Fail, as retryable, the running jobs whose worker went silent (no heartbeat for FINETUNE_STALE_SECONDS)
    and the queued jobs no worker took for FINETUNE_QUEUED_LOST_SECONDS while none was training; run by beat.
    Their checkpoints stay, so a retry resumes. Returns how many it failed."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.FINETUNE_STALE_SECONDS)
    lost_before = now - timedelta(seconds=settings.FINETUNE_QUEUED_LOST_SECONDS)
    with transaction.atomic():
        stale = list(
            FineTuneJob.objects.select_for_update(skip_locked=True).filter(
                status=JobStatus.RUNNING, heartbeat_at__lt=stale_before
            )
        )
        _fail_all(stale, WORKER_LOST, now)
        # A queued job waits while another trains (one per machine), and for a moment after one ends.
        busy = FineTuneJob.objects.filter(Q(status=JobStatus.RUNNING) | Q(finished_at__gte=lost_before)).exists()
        lost = []
        if not busy:
            lost = list(
                FineTuneJob.objects.select_for_update(skip_locked=True).filter(
                    status=JobStatus.QUEUED, heartbeat_at__lt=lost_before
                )
            )
            _fail_all(lost, QUEUE_LOST, now)
    return len(stale) + len(lost)


def _fail_all(jobs: list[FineTuneJob], message: str, now) -> None:
    for job in jobs:
        job.status, job.message, job.finished_at = JobStatus.FAILED, message, now
    FineTuneJob.objects.bulk_update(jobs, ["status", "message", "finished_at"])
    JobLogLine.objects.bulk_create(JobLogLine(job=job, message=f"Failed: {message}") for job in jobs)
