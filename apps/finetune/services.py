"""Writes for fine-tuning. Each area keeps its own section, below.

Jobs: `finetune_job_create` checks what the owner asked for (a trainable version they own, the method its
kind trains, a starting adapter of theirs), fills the settings the person did not choose with defaults
suited to the data's size, and queues the job on the `finetune` queue once the transaction commits.
`finetune_job_cancel` ends a queued job at once and asks a running one to stop between two steps;
`finetune_job_retry` queues a failed or cancelled job again, which resumes from its last checkpoint. The
task body (`finetune_job_run`) and beat's sweep (`finetune_jobs_fail_stale`) live in apps/finetune/jobs.py,
beside the rest of the runner, and are exported from here.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from apps.finetune.jobs import (  # noqa: F401 (the task body and beat's sweep, exported as services)
    finetune_job_run,
    finetune_jobs_fail_stale,
    training_model_dir,
    training_settings_to_dict,
)
from apps.finetune.models import Adapter, DatasetKind, DatasetVersion, FineTuneJob, JobLogLine, JobStatus, Method
from apps.finetune.tasks import finetune_job_run_task

if TYPE_CHECKING:  # training.py imports torch, which the web app never needs: imported where used
    from apps.finetune.training import TrainingSettings

# --- jobs ------------------------------------------------------------------------------------------------


class FineTuneJobError(Exception):
    """A refused job action; str(error) is written for the person who asked."""


METHOD_FOR_KIND = {DatasetKind.SFT: Method.SFT, DatasetKind.PREFERENCE: Method.DPO}
# What the Train form's advanced section may set; everything else keeps the method's defaults.
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules")
TRAINING_KEYS = ("learning_rate", "epochs", "batch_size", "max_length", "seed")
SETTING_KEYS = LORA_KEYS + TRAINING_KEYS
CANCELLED_QUEUED = "Cancelled before it started."
SMALL_DATASET = 100  # examples: below it one more epoch, since each epoch is only a few steps
CHECKPOINTS_PER_RUN = 4  # at least, so a killed small job still resumes part-way


def training_settings_default(*, method: str, examples: int) -> TrainingSettings:
    """The method's defaults (training.py) fitted to the data: a batch no larger than the training split,
    an extra epoch for a small set, and checkpoints often enough that a short run has some to resume from."""
    from apps.finetune.training import DPO_DEFAULTS, SFT_DEFAULTS

    defaults = SFT_DEFAULTS if method == Method.SFT else DPO_DEFAULTS
    epochs = defaults.epochs + (1 if examples < SMALL_DATASET else 0)
    batch_size = max(1, min(defaults.batch_size, examples))
    steps = math.ceil(examples / batch_size) * epochs
    checkpoint_every = max(1, min(defaults.checkpoint_every, steps // CHECKPOINTS_PER_RUN))
    return replace(defaults, epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every)


def _settings_build(*, method: str, examples: int, chosen: dict) -> TrainingSettings:
    unknown = set(chosen) - set(SETTING_KEYS)
    if unknown:
        raise FineTuneJobError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
    base = training_settings_default(method=method, examples=examples)
    lora = {key: chosen[key] for key in LORA_KEYS if chosen.get(key) not in (None, "", [])}
    if "target_modules" in lora:
        lora["target_modules"] = tuple(lora["target_modules"])
    training = {key: chosen[key] for key in TRAINING_KEYS if chosen.get(key) not in (None, "")}
    try:
        return replace(base, lora=replace(base.lora, **lora), **training)
    except (TypeError, ValueError) as error:
        raise FineTuneJobError(f"Invalid training settings: {error}") from error


def finetune_job_create(
    *,
    owner,
    dataset_version: DatasetVersion,
    method: str,
    settings: dict | None = None,
    start_adapter: Adapter | None = None,
    assistant=None,
) -> FineTuneJob:
    """A queued job training `dataset_version` with `method` ("sft" or "dpo"). `settings` may set the keys
    of SETTING_KEYS; the rest are `training_settings_default`'s. DPO may start from (and refer to) one of
    the owner's SFT adapters. The base model is the assistant's, else the starting adapter's, else the one
    the engine serves. Raises FineTuneJobError, with the reason, for anything it refuses."""
    from apps.registry.models import BaseModel
    from apps.registry.selectors import base_model_get_ready

    version = DatasetVersion.objects.select_related("dataset").get(pk=dataset_version.pk)
    if version.dataset.owner_id != owner.pk:
        raise FineTuneJobError("You can only train on your own datasets.")
    if not version.trainable:
        raise FineTuneJobError(
            f"{version} has {version.high_findings} high-severity finding(s) from the poisoning scan; it trains "
            "only once an admin overrides them with a written reason."
        )
    if method not in Method.values:
        raise FineTuneJobError(f"Unknown method {method!r}; choose one of {', '.join(Method.values)}.")
    if METHOD_FOR_KIND[version.dataset.kind] != method:
        raise FineTuneJobError(
            f"A {version.dataset.get_kind_display()} dataset trains with "
            f"{Method(METHOD_FOR_KIND[version.dataset.kind]).label}, not {Method(method).label}."
        )
    if start_adapter is not None:
        if start_adapter.owner_id != owner.pk:
            raise FineTuneJobError("You can only start from your own adapters.")
        if method != Method.DPO:
            raise FineTuneJobError("Only a preference (DPO) job starts from an adapter.")
    if assistant is not None and assistant.owner_id != owner.pk:
        raise FineTuneJobError("You can only fine-tune your own assistants.")
    if assistant is not None and assistant.current_version_id:
        base_model = assistant.current_version.base_model
    elif start_adapter is not None:
        base_model = start_adapter.base_model
    else:
        base_model = base_model_get_ready(kind=BaseModel.Kind.CHAT)
    if base_model is None or not base_model.ready:
        raise FineTuneJobError("No chat model is ready to fine-tune yet.")
    if start_adapter is not None and start_adapter.base_model_id != base_model.pk:
        raise FineTuneJobError(f"The adapter {start_adapter} was trained on another base model.")
    if training_model_dir(base_model=base_model) is None:
        raise FineTuneJobError(f"{base_model} has no trainable weights on this machine.")
    chosen = _settings_build(method=method, examples=version.example_count, chosen=settings or {})
    with transaction.atomic():
        job = FineTuneJob.objects.create(
            owner=owner,
            assistant=assistant,
            dataset_version=version,
            method=method,
            base_model=base_model,
            start_adapter=start_adapter,
            settings=training_settings_to_dict(chosen),
            heartbeat_at=timezone.now(),  # queued since (beat's lost-message check)
        )
        JobLogLine.objects.create(job=job, message=f"Queued: {method.upper()} on {version}, base model {base_model}.")
        _enqueue(job)
    return job


def finetune_job_cancel(*, job: FineTuneJob) -> FineTuneJob:
    """A queued job is cancelled at once; a running one between two steps (its worker reads the flag)."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
        if job.status == JobStatus.QUEUED:
            job.status, job.finished_at, job.message = JobStatus.CANCELLED, timezone.now(), CANCELLED_QUEUED
        elif job.status == JobStatus.RUNNING:
            job.cancel_requested = True
        else:
            raise FineTuneJobError("Only a queued or running job can be cancelled.")
        job.save(update_fields=["status", "finished_at", "message", "cancel_requested"])
        JobLogLine.objects.create(job=job, message="Cancel requested.")
    return job


def finetune_job_retry(*, job: FineTuneJob) -> FineTuneJob:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint, with its metric points kept."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise FineTuneJobError("Only a failed or cancelled job can be retried.")
        job.status, job.message, job.cancel_requested = JobStatus.QUEUED, "", False
        job.finished_at, job.heartbeat_at = None, timezone.now()
        job.save(update_fields=["status", "message", "cancel_requested", "finished_at", "heartbeat_at"])
        JobLogLine.objects.create(job=job, message="Queued again: it resumes from its last checkpoint.")
        _enqueue(job)
    return job


def _enqueue(job: FineTuneJob) -> None:
    job_id = job.pk
    transaction.on_commit(lambda: finetune_job_run_task.delay(job_id))


# --- end jobs --------------------------------------------------------------------------------------------
