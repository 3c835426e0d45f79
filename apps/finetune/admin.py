from django.contrib import admin

from apps.finetune.models import Adapter, Evaluation

# --- adapters ------------------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Adapters are made by jobs and uploads, evaluations by the worker: the admin shows them, nothing more."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


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

    def has_delete_permission(self, request, obj=None):
        return False  # assistant versions PROTECT it; its files would be left behind


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
