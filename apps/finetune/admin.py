"""Fine-tuning in the admin: read-only. Versions are immutable; uploads, curation and the scan override go through
the services (the pages), which keep the provenance and the reason. Adapters are made by jobs and uploads,
evaluations by the worker."""

from django.contrib import admin

from apps.core.admin import ReadOnlyAdminMixin
from apps.finetune.models import Adapter, Dataset, DatasetExample, DatasetVersion, Evaluation


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    pass


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ("name", "kind", "owner", "created_at")
    list_filter = ("kind",)
    search_fields = ("name", "owner__username")


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = ("dataset", "number", "source", "example_count", "token_count", "high_findings", "override_by")
    list_filter = ("source",)
    search_fields = ("dataset__name", "sha256")


@admin.register(DatasetExample)
class DatasetExampleAdmin(ReadOnlyAdmin):
    list_display = ("version", "index", "line", "tokens", "sha256")
    search_fields = ("sha256",)


# --- adapters ------------------------------------------------------------------------------------------


@admin.register(Adapter)
class AdapterAdmin(ReadOnlyAdmin):
    list_display = ("name", "owner", "source", "base_model", "engine_id", "created_at")
    list_filter = ("source",)
    list_select_related = ("owner", "base_model")
    search_fields = ("name", "engine_id", "owner__username", "sha256")
    fields = (
        "owner", "name", "source", "base_model", "base_model_hash", "job", "dataset_version", "engine_id", "path",
        "sha256", "config", "metrics", "created_at",
    )  # fmt: skip
    readonly_fields = fields


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin):
    list_display = ("adapter", "status", "progress", "flagged", "created_at", "finished_at")
    list_filter = ("status",)
    list_select_related = ("adapter",)
    readonly_fields = (
        "adapter", "requested_by", "status", "progress", "progress_message", "message", "validation_examples",
        "base_loss", "tuned_loss", "loss_sources", "baseline_difference", "flagged", "answers", "triggers",
        "created_at", "started_at", "updated_at", "finished_at",
    )  # fmt: skip
    fields = readonly_fields


# --- end adapters ---
