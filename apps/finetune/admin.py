"""Fine-tuning in the admin: read-only. Versions are immutable; uploads, curation and the scan override go through
the services (the pages), which keep the provenance and the reason."""

from django.contrib import admin

from apps.finetune.models import Dataset, DatasetExample, DatasetVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


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
