from django.contrib import admin

from apps.core.admin import ReadOnlyAdminMixin
from apps.loop.models import LoopRun


@admin.register(LoopRun)
class LoopRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Runs are made by "Improve this assistant" and completed by the job-success hook: shown, never edited."""

    list_display = ("id", "assistant", "parent", "dataset_version", "job", "draft", "created_at")
    list_select_related = ("assistant", "parent", "dataset_version", "job", "draft")
