from django.db import models
from django.db.models import Q


class BaseModel(models.Model):
    """One installed model artifact (a name + variant), as bootstrap_models left it.

    The files live under MODELS_DIR/<name>/<content_hash>/ with a manifest.json; this row is the
    index the web app, the worker and the status page read. Only a `ready` row may be served.
    """

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDING = "embedding", "Embedding"

    class Status(models.TextChoices):
        PENDING = "pending", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    name = models.SlugField(max_length=100)
    variant = models.SlugField(max_length=40, help_text="fp32 is the reference every other variant is gated against.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    progress = models.FloatField(default=0.0)
    progress_message = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    path = models.CharField(max_length=500, blank=True)
    source_package = models.CharField(max_length=100)
    source_version = models.CharField(max_length=40, blank=True)
    format = models.CharField(max_length=20, default="onnx")
    dtype = models.CharField(max_length=20, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    perplexity = models.FloatField(null=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    manifest = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "name", "variant"]
        constraints = [
            models.UniqueConstraint(fields=["name", "variant"], name="basemodel_unique_name_variant"),
            models.CheckConstraint(condition=Q(kind__in=["chat", "embedding"]), name="basemodel_kind_valid"),
            models.CheckConstraint(condition=Q(progress__gte=0) & Q(progress__lte=1), name="basemodel_progress_0_1"),
            # A ready model always points at a verified artifact directory.
            models.CheckConstraint(
                condition=~Q(status="ready") | (~Q(content_hash="") & ~Q(path="")),
                name="basemodel_ready_has_artifact",
            ),
            # A chat model is only ready once its perplexity was measured against the fp32 reference.
            models.CheckConstraint(
                condition=~Q(status="ready", kind="chat") | Q(perplexity__isnull=False),
                name="basemodel_ready_chat_has_perplexity",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.variant})"

    @property
    def ready(self) -> bool:
        return self.status == self.Status.READY
