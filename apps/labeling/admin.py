"""Labeling in the Django admin: read-only, for audit. Task sets, guidelines, gold orders and exclusions are
changed through the panel's pages (their services keep the invariants: guideline versions never edited, gold
panels re-judged on exclusion); rankings are never edited at all."""

from django.contrib import admin

from apps.core.admin import ReadOnlyAdminMixin
from apps.labeling.models import Candidate, Claim, Guideline, LabelerExclusion, Ranking, Task, TaskSet


class GuidelineInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Guideline
    fields = ("version", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True


@admin.register(TaskSet)
class TaskSetAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("name", "status", "candidates_per_task", "rankings_per_task", "progress_done", "created_at")
    list_filter = ("status",)
    search_fields = ("name",)
    inlines = [GuidelineInline]


@admin.register(Guideline)
class GuidelineAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("task_set", "version", "created_by", "created_at")


class CandidateInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Candidate
    fields = ("index", "version", "seed", "stream", "text")
    readonly_fields = fields
    extra = 0


@admin.register(Task)
class TaskAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "task_set", "source", "gold_sampled", "gold_order", "created_at")
    list_filter = ("source", "gold_sampled", "task_set")
    search_fields = ("prompt",)
    inlines = [CandidateInline]


@admin.register(Claim)
class ClaimAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("task", "labeler", "claimed_at", "expires_at")


@admin.register(Ranking)
class RankingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("task", "labeler", "order", "not_rankable_reason", "guideline", "seconds_spent", "created_at")
    list_filter = ("task__task_set",)
    search_fields = ("labeler__username",)


@admin.register(LabelerExclusion)
class LabelerExclusionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("task_set", "labeler", "excluded_by", "created_at")
