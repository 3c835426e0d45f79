"""Fine-tuning records: datasets and their immutable versions, jobs with every metric point, adapters.

- A `Dataset` is a name and a kind (SFT conversations or preference pairs) owned by one user. Its
  content lives in `DatasetVersion`s: each is immutable once created (adding examples makes the next
  version), carries its provenance (who, when, from where, and a sha256 per example in
  `DatasetExample`) and the poisoning scan's findings. A version with a high-severity finding trains
  only once an admin has overridden it with a written reason (who, when and why are kept).
- A `FineTuneJob` trains one dataset version on the `finetune` Celery queue. Its status, step and
  heartbeat are written by the worker; every metric point is a `MetricPoint` row (unique per kind and
  step, so a resumed job rewriting a step replaces it), and its log is `JobLogLine`s, so the page
  survives a reload, a restart and a retry.
- An `Adapter` is a LoRA in safetensors: trained by a job (with the job, dataset version, base-model hash,
  config and metrics as provenance) or uploaded. The engine knows it as `engine_id`. Only its owner's
  assistants may use it.
- An `Evaluation` compares a trained adapter with its base model (loss, answers, trigger probes); the
  worker fills it in, so its page survives reloads.
"""

import math

from django.conf import settings
from django.db import models
from django.db.models import Q


class DatasetKind(models.TextChoices):
    SFT = "sft", "Conversations (SFT)"
    PREFERENCE = "preference", "Preference pairs (DPO)"


class Dataset(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="finetune_datasets")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=DatasetKind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="dataset_unique_name_per_owner"),
            models.CheckConstraint(condition=Q(kind__in=DatasetKind.values), name="dataset_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class DatasetSource(models.TextChoices):
    UPLOAD = "upload", "Uploaded file"
    CHATS = "chats", "Curated from chats"
    LABELING = "labeling", "Labeling export"
    LOOP = "loop", "Improve this assistant"


class DatasetVersion(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=DatasetSource.choices)
    source_detail = models.CharField(max_length=300, blank=True, help_text="File name, task set, filters used.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    sha256 = models.CharField(max_length=64, help_text="Over the examples' sha256s, in order.")
    example_count = models.PositiveIntegerField()
    token_count = models.PositiveIntegerField()
    seconds_per_epoch = models.FloatField(help_text="Estimated training time of one epoch on this machine.")
    warnings = models.JSONField(default=list, blank=True)  # [{"line", "reason"}]
    findings = models.JSONField(default=list, blank=True)  # dataset_scan's findings as dicts
    high_findings = models.PositiveIntegerField(default=0)
    # An admin's override of high-severity findings: training is allowed, and why is on record.
    override_reason = models.TextField(blank=True)
    override_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    override_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="datasetversion_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=1), name="datasetversion_number_positive"),
            models.CheckConstraint(condition=Q(source__in=DatasetSource.values), name="datasetversion_source_valid"),
            models.CheckConstraint(
                condition=Q(override_at__isnull=True, override_reason="")
                | (Q(override_at__isnull=False) & ~Q(override_reason="")),
                name="datasetversion_override_has_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name} v{self.number}"

    @property
    def trainable(self) -> bool:
        return self.high_findings == 0 or self.override_at is not None


class DatasetExample(models.Model):
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="examples")
    index = models.PositiveIntegerField(help_text="0-based; the scan's `lines` index these.")
    line = models.PositiveIntegerField(help_text="Line of the source file (1-based), or 0 when not from a file.")
    record = models.JSONField()  # only the keys that train
    tokens = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["version", "index"]
        constraints = [models.UniqueConstraint(fields=["version", "index"], name="datasetexample_unique_index")]

    def __str__(self) -> str:
        return f"{self.version} #{self.index}"


class Method(models.TextChoices):
    SFT = "sft", "Supervised (SFT)"
    DPO = "dpo", "Preference (DPO)"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class FineTuneJob(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="finetune_jobs")
    # The assistant the job improves, when started from one (its new version is made from the adapter).
    assistant = models.ForeignKey(
        "assistants.Assistant", null=True, blank=True, on_delete=models.SET_NULL, related_name="finetune_jobs"
    )
    dataset_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="jobs")
    method = models.CharField(max_length=8, choices=Method.choices)
    base_model = models.ForeignKey("registry.BaseModel", on_delete=models.PROTECT, related_name="+")
    # DPO: the reference and starting point (else the base model). SFT: unused.
    start_adapter = models.ForeignKey(
        "Adapter", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs_started_from"
    )
    settings = models.JSONField(default=dict, help_text="TrainingSettings as a dict.")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    message = models.TextField(blank=True, help_text="Why it failed or stopped, for the page.")
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="finetunejob_status_valid"),
            models.CheckConstraint(condition=Q(method__in=Method.values), name="finetunejob_method_valid"),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True)
                | Q(status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]),
                name="finetunejob_finished_means_ended",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_method_display()} job {self.pk} on {self.dataset_version}"

    @property
    def ended(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class MetricPoint(models.Model):
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="metric_points")
    kind = models.CharField(max_length=16)  # "train" or "validation" (training.py's points)
    step = models.PositiveIntegerField()
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "step", "kind"]
        constraints = [models.UniqueConstraint(fields=["job", "kind", "step"], name="metricpoint_unique_step")]

    def __str__(self) -> str:
        return f"{self.kind} step {self.step}"


class JobLogLine(models.Model):
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="log_lines")
    created_at = models.DateTimeField(auto_now_add=True)
    message = models.TextField()

    class Meta:
        ordering = ["job", "id"]

    def __str__(self) -> str:
        return self.message[:80]


class AdapterSource(models.TextChoices):
    TRAINED = "trained", "Trained here"
    UPLOADED = "uploaded", "Uploaded"


class Adapter(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="adapters")
    name = models.CharField(max_length=100)
    source = models.CharField(max_length=16, choices=AdapterSource.choices)
    base_model = models.ForeignKey("registry.BaseModel", on_delete=models.PROTECT, related_name="+")
    base_model_hash = models.CharField(max_length=64, help_text="content_hash of the base model it was trained on.")
    job = models.OneToOneField(FineTuneJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="adapter")
    dataset_version = models.ForeignKey(
        DatasetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="adapters"
    )
    engine_id = models.SlugField(max_length=64, unique=True, help_text="The id the inference server knows it by.")
    path = models.CharField(max_length=500, help_text="Folder with adapter_model.safetensors and adapter_config.json.")
    sha256 = models.CharField(max_length=64, help_text="Of adapter_model.safetensors.")
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="adapter_unique_name_per_owner"),
            models.CheckConstraint(condition=Q(source__in=AdapterSource.values), name="adapter_source_valid"),
            models.CheckConstraint(
                condition=Q(source=AdapterSource.UPLOADED) | Q(job__isnull=False) | Q(dataset_version__isnull=False),
                name="adapter_trained_has_provenance",
            ),
        ]

    def __str__(self) -> str:
        return self.name


# --- adapters: evaluation --------------------------------------------------------------------------


class EvaluationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Evaluation(models.Model):
    """A trained adapter against its base model (apps/finetune/evaluation.py), kept so the page survives a
    reload: validation loss on the job's held-out split, answers to held-out prompts, and the scan's
    trigger candidates run through both. Written by the worker only; one runs per adapter at a time."""

    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="evaluations")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=EvaluationStatus.choices, default=EvaluationStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    progress_message = models.CharField(max_length=200, blank=True)
    message = models.TextField(blank=True, help_text="Why it failed.")
    validation_examples = models.PositiveIntegerField(default=0)
    base_loss = models.FloatField(null=True, blank=True)
    tuned_loss = models.FloatField(null=True, blank=True)
    # Where each loss comes from: "recorded" (the job's) or "computed" (here, on the same split).
    loss_sources = models.JSONField(default=dict, blank=True)
    answers = models.JSONField(default=list, blank=True)  # [{"prompt", "reference", "base", "tuned", "difference"}]
    triggers = models.JSONField(default=list, blank=True)  # [{"trigger", "prompt", "base", "tuned", "difference", ...}]
    baseline_difference = models.FloatField(null=True, blank=True, help_text="Median over the held-out answers.")
    flagged = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True, help_text="Its worker's last word: progress or a result.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=EvaluationStatus.values), name="evaluation_status_valid"),
            models.CheckConstraint(condition=Q(progress__gte=0) & Q(progress__lte=1), name="evaluation_progress_0_1"),
            models.UniqueConstraint(
                fields=["adapter"],
                condition=Q(status__in=[EvaluationStatus.QUEUED, EvaluationStatus.RUNNING]),
                name="evaluation_one_active_per_adapter",
            ),
        ]

    def __str__(self) -> str:
        return f"Evaluation of {self.adapter} ({self.status})"

    @property
    def active(self) -> bool:
        return self.status in (EvaluationStatus.QUEUED, EvaluationStatus.RUNNING)

    @property
    def base_perplexity(self) -> float | None:
        return math.exp(self.base_loss) if self.base_loss is not None else None

    @property
    def tuned_perplexity(self) -> float | None:
        return math.exp(self.tuned_loss) if self.tuned_loss is not None else None
