"""Reads for fine-tuning datasets, and the one place that decides who may see them.

A dataset and its versions are its owner's: everyone else gets 404, not 403, so ids reveal nothing. The one
exception is the review of a version with high-severity findings: an admin may open any such version to read
its report and override it (`dataset_version_get_for_viewer`); everything that writes or reads examples into
something new (adding, curating, training) goes through `dataset_get_owned`.

An adapter is its owner's alone: anyone else's is None here (views answer 404), so ids cannot be probed.

A fine-tune job is its owner's alone too: anyone else gets 404 on its page, its progress and its actions.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import Http404

from apps.accounts.models import Role
from apps.assistants.models import AssistantVersion
from apps.chat.models import Message
from apps.finetune.models import (
    Adapter,
    Dataset,
    DatasetExample,
    DatasetKind,
    DatasetVersion,
    Evaluation,
    FineTuneJob,
    JobStatus,
    MetricPoint,
)
from apps.registry.models import BaseModel

MAX_LINES_SHOWN = 50  # of a finding's examples, on the report; the rest are counted


def is_admin(user) -> bool:
    return user.is_authenticated and user.role == Role.ADMIN


def dataset_version_overridable(*, user, version: DatasetVersion) -> bool:
    """Whether `user` may override this version's high-severity findings (dataset_version_override's rules)."""
    return is_admin(user) and version.high_findings > 0 and version.override_at is None


def dataset_list_owned(*, user, kind: str | None = None) -> QuerySet[Dataset]:
    """The user's datasets, each with `version_count` and `latest_number`."""
    newest = DatasetVersion.objects.filter(dataset=OuterRef("pk")).order_by("-number")
    datasets = Dataset.objects.filter(owner=user).annotate(
        version_count=Count("versions"),
        latest_number=Subquery(newest.values("number")[:1]),
        latest_id=Subquery(newest.values("pk")[:1]),
    )
    return datasets.filter(kind=kind) if kind else datasets


def dataset_get_owned(*, user, pk: int) -> Dataset:
    dataset = Dataset.objects.filter(owner=user, pk=pk).first() if user.is_authenticated else None
    if dataset is None:
        raise Http404("No such dataset.")
    return dataset


def dataset_versions(*, dataset: Dataset) -> QuerySet[DatasetVersion]:
    return dataset.versions.select_related("created_by", "override_by")


def dataset_version_latest(*, dataset: Dataset) -> DatasetVersion | None:
    return dataset.versions.order_by("-number").first()


def dataset_version_get_for_viewer(*, user, pk: int) -> DatasetVersion:
    """The owner's version; or, for an admin, any version with high-severity findings (to review it)."""
    versions = DatasetVersion.objects.select_related("dataset__owner", "created_by", "override_by").filter(pk=pk)
    version = versions.first() if user.is_authenticated else None
    if version is None or not (version.dataset.owner_id == user.pk or (is_admin(user) and version.high_findings)):
        raise Http404("No such dataset version.")
    return version


def versions_awaiting_review() -> QuerySet[DatasetVersion]:
    """For admins: versions that cannot train until someone overrides their high-severity findings."""
    return (
        DatasetVersion.objects.filter(high_findings__gt=0, override_at__isnull=True)
        .select_related("dataset__owner")
        .order_by("-created_at")
    )


def dataset_examples(*, version: DatasetVersion) -> QuerySet[DatasetExample]:
    return version.examples.all()


@dataclass(frozen=True)
class FindingRow:
    """A scan finding as the report shows it."""

    severity: str
    kind: str
    summary: str
    evidence: list[tuple[str, str]]  # (key, value as text)
    examples: list[int]  # 1-based example numbers (the first MAX_LINES_SHOWN)
    file_lines: list[int]  # their lines in the uploaded file, when those are other numbers
    more: int  # examples not listed


def _evidence_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value, ensure_ascii=False)


def finding_rows(*, version: DatasetVersion) -> list[FindingRow]:
    shown = {i for finding in version.findings for i in finding["lines"][:MAX_LINES_SHOWN]}
    lines = dict(version.examples.filter(index__in=shown).values_list("index", "line"))
    rows = []
    for finding in version.findings:
        indices = finding["lines"][:MAX_LINES_SHOWN]
        examples = [i + 1 for i in indices]
        file_lines = [lines[i] for i in indices if lines.get(i)]
        rows.append(
            FindingRow(
                severity=finding["severity"],
                kind=finding["kind"],
                summary=finding.get("summary", ""),
                evidence=[(key, _evidence_text(value)) for key, value in finding["evidence"].items()],
                examples=examples,
                file_lines=file_lines if file_lines != examples else [],
                more=len(finding["lines"]) - len(indices),
            )
        )
    return rows


def example_flags(*, version: DatasetVersion) -> dict[int, list[str]]:
    """Example index -> the kinds of the findings it is in (for the preview)."""
    flags: dict[int, list[str]] = {}
    for finding in version.findings:
        for index in finding["lines"]:
            flags.setdefault(index, []).append(f"{finding['severity']}: {finding['kind']}")
    return flags


def answer_get_owned(*, user, message_id) -> Message:
    """A finished assistant answer in one of the user's own conversations (what may be curated), else 404."""
    message = (
        Message.objects.select_related("conversation", "assistant_version")
        .filter(
            pk=message_id,
            role=Message.Role.ASSISTANT,
            status__in=[Message.Status.DONE, Message.Status.STOPPED],
            conversation__owner=user,
        )
        .first()
        if user.is_authenticated
        else None
    )
    if message is None:
        raise Http404("No such answer.")
    return message


def curation_datasets(*, user) -> dict[str, list[str]]:
    """The names of the user's datasets by kind, for the chat page's "add to dataset" pickers."""
    names: dict[str, list[str]] = {kind: [] for kind in DatasetKind.values}
    for name, kind in Dataset.objects.filter(owner=user).order_by("name").values_list("name", "kind"):
        names[kind].append(name)
    return names


# --- adapters ------------------------------------------------------------------------------------------


def base_model_training_row(*, base_model: BaseModel) -> BaseModel | None:
    """The registry row whose folder holds the Hugging Face checkpoint (hf/: config.json, safetensors, tokenizer)
    that trains `base_model`: itself, or, for a quantized variant that has none of its own, the same model's
    other variant that has one (the fp32 reference is built from that folder). Its content_hash is what an
    adapter records as trained on."""
    same_model = BaseModel.objects.filter(name=base_model.name).exclude(pk=base_model.pk).order_by("variant")
    for candidate in [base_model, *same_model]:
        if candidate.path and (Path(candidate.path) / "hf" / "config.json").is_file():
            return candidate
    return None


def base_model_training_dir(*, base_model: BaseModel) -> Path | None:
    """The Hugging Face folder of base_model_training_row: what the trainer, the evaluation, dataset token counts
    and an upload's shape check read."""
    row = base_model_training_row(base_model=base_model)
    return Path(row.path) / "hf" if row is not None else None


def adapter_list_owned(*, user) -> QuerySet[Adapter]:
    if not user.is_authenticated:
        return Adapter.objects.none()
    return Adapter.objects.filter(owner=user).select_related("base_model", "dataset_version__dataset", "job")


def adapter_get_owned(*, user, adapter_id: int) -> Adapter | None:
    return adapter_list_owned(user=user).filter(pk=adapter_id).first()


def adapter_newest_version(*, adapter: Adapter) -> AssistantVersion | None:
    """The newest assistant version that uses the adapter (on its owner's assistants: no one else's can)."""
    return (
        AssistantVersion.objects.filter(adapter=adapter, assistant__owner_id=adapter.owner_id)
        .select_related("assistant")
        .order_by("-created_at", "-pk")
        .first()
    )


def evaluation_latest(*, adapter: Adapter) -> Evaluation | None:
    return adapter.evaluations.order_by("-created_at", "-pk").first()


# --- end adapters ---


# --- jobs ------------------------------------------------------------------------------------------------


def job_list_owned(*, user) -> QuerySet[FineTuneJob]:
    return FineTuneJob.objects.filter(owner=user).select_related("dataset_version__dataset", "base_model")


def job_get_owned(*, user, pk: int) -> FineTuneJob:
    job = (
        FineTuneJob.objects.select_related("dataset_version__dataset", "base_model", "start_adapter")
        .filter(owner=user, pk=pk)
        .first()
        if user.is_authenticated
        else None
    )
    if job is None:
        raise Http404("No such fine-tune job.")
    return job


def job_version_get_owned(*, user, pk: int) -> DatasetVersion:
    """A dataset version its owner may start a job on (whether it may train is the service's to say)."""
    version = (
        DatasetVersion.objects.select_related("dataset").filter(dataset__owner=user, pk=pk).first()
        if user.is_authenticated
        else None
    )
    if version is None:
        raise Http404("No such dataset version.")
    return version


def job_state(*, job: FineTuneJob) -> dict:
    """What the job page shows at the top, as JSON: status, step, the latest metrics and what may be done."""
    latest = {
        kind: MetricPoint.objects.filter(job=job, kind=kind).order_by("-step").values("step", "values").first()
        for kind in ("train", "validation")
    }
    train = (latest["train"] or {}).get("values", {})
    validation = (latest["validation"] or {}).get("values", {})
    running = job.status == JobStatus.RUNNING
    return {
        "status": job.status,
        "status_label": job.get_status_display(),
        "message": job.message,
        "step": job.step,
        "total_steps": job.total_steps,
        "epoch": train.get("epoch"),
        "train_loss": train.get("loss"),
        "validation_loss": validation.get("loss"),
        "tokens_per_second": train.get("tokens_per_second"),
        "eta_s": train.get("eta_s") if running else None,
        "cancel_requested": job.cancel_requested,
        "ended": job.ended,
        "can_cancel": job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and not job.cancel_requested,
        "can_retry": job.status in (JobStatus.FAILED, JobStatus.CANCELLED),
        "adapter": Adapter.objects.filter(job=job).values("name", "engine_id").first(),
    }


def job_progress(*, job: FineTuneJob, after: int = 0, log_after: int = 0) -> dict:
    """The job's state, its metric points with an id above `after` and its log lines above `log_after`, in
    order, with the cursors to ask from next time. A reload asks from 0 and gets every point."""
    points = [
        {"id": p.pk, "kind": p.kind, "step": p.step, **p.values}
        for p in MetricPoint.objects.filter(job=job, pk__gt=after).order_by("pk")
    ]
    log = list(job.log_lines.filter(pk__gt=log_after).order_by("pk").values("id", "created_at", "message"))
    for line in log:
        line["created_at"] = line["created_at"].isoformat()
    return {
        "job": job_state(job=job),
        "points": points,
        "after": points[-1]["id"] if points else after,
        "log": log,
        "log_after": log[-1]["id"] if log else log_after,
    }


# --- end jobs --------------------------------------------------------------------------------------------
