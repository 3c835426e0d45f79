"""Reads for fine-tuning, and the one place that decides who may see a job: its owner, and nobody else.
Everyone else gets 404, not 403, so ids reveal nothing. Each area keeps its own section, below."""

from django.db.models import QuerySet
from django.http import Http404

from apps.finetune.models import Adapter, DatasetVersion, FineTuneJob, JobStatus, Method, MetricPoint

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


def job_start_adapters(*, user) -> QuerySet[Adapter]:
    """The adapters a DPO job of this user may start from: their own."""
    return Adapter.objects.filter(owner=user).order_by("-created_at")


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
        "id": job.pk,
        "method": job.method,
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
        "dpo": job.method == Method.DPO,
    }


# --- end jobs --------------------------------------------------------------------------------------------
