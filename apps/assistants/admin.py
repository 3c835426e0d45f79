from django.contrib import admin, messages

from apps.assistants.models import Assistant, AssistantReport, AssistantVersion, CanaryIncident
from apps.assistants.services import assistant_reports_resolve, assistant_set_unlisted, assistant_visibility_set
from apps.core.admin import ReadOnlyAdminMixin

VERSION_FIELDS = (
    "number",
    "name",
    "description",
    "instructions",
    "starter_prompts",
    "base_model",
    "adapter",
    "temperature",
    "top_p",
    "max_tokens",
    "repetition_penalty",
    "knowledge_collections",
    "knowledge_top_k",
    "knowledge_min_score",
    "knowledge_share_documents",
    "canary",
    "created_by",
    "created_at",
)


class AssistantVersionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = AssistantVersion
    fields = ("number", "name", "base_model", "adapter", "temperature", "max_tokens", "created_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    ordering = ("-number",)


def _set_unlisted(assistants, *, unlisted: bool) -> int:
    for assistant in assistants:
        assistant_set_unlisted(assistant=assistant, unlisted=unlisted)
    return len(assistants)


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "owner", "visibility", "unlisted", "updated_at")
    list_filter = ("visibility", "unlisted")
    search_fields = ("slug", "current_version__name", "owner__username")
    list_select_related = ("owner", "current_version")
    readonly_fields = ("owner", "slug", "current_version", "share_token", "share_expires_at", "avatar", "created_at")
    fields = (*readonly_fields[:2], "visibility", "unlisted", *readonly_fields[2:])
    inlines = [AssistantVersionInline]
    actions = ["unlist", "list_again"]

    def has_add_permission(self, request):
        return False  # assistants are made in the builder, with their first version

    def save_model(self, request, obj, form, change):
        """Writes go through the services, whose rules the admin must not skip (going private ends the
        share link). Only visibility and unlisted are editable here."""
        if "visibility" in form.changed_data:
            assistant_visibility_set(assistant=obj, visibility=form.cleaned_data["visibility"])
        if "unlisted" in form.changed_data:
            assistant_set_unlisted(assistant=obj, unlisted=form.cleaned_data["unlisted"])

    @admin.action(description="Unlist from gallery")
    def unlist(self, request, queryset):
        count = _set_unlisted(queryset, unlisted=True)
        self.message_user(request, f"Unlisted {count} assistant(s).", messages.SUCCESS)

    @admin.action(description="List again")
    def list_again(self, request, queryset):
        count = _set_unlisted(queryset, unlisted=False)
        self.message_user(request, f"Listed {count} assistant(s) again.", messages.SUCCESS)


@admin.register(AssistantVersion)
class AssistantVersionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("assistant", "number", "name", "base_model", "created_by", "created_at")
    list_select_related = ("assistant", "base_model", "created_by")
    search_fields = ("assistant__slug", "name")
    fields = ("assistant", *VERSION_FIELDS)
    readonly_fields = fields


@admin.register(AssistantReport)
class AssistantReportAdmin(admin.ModelAdmin):
    list_display = ("assistant", "reporter", "reason", "resolved", "created_at")
    list_filter = ("resolved",)
    list_select_related = ("assistant", "reporter")
    search_fields = ("assistant__slug", "reporter__username", "reason")
    readonly_fields = ("assistant", "reporter", "reason", "created_at")
    fields = (*readonly_fields, "resolved")
    actions = ["mark_resolved", "unlist_assistants"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Mark resolved")
    def mark_resolved(self, request, queryset):
        count = assistant_reports_resolve(report_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Marked {count} report(s) resolved.", messages.SUCCESS)

    @admin.action(description="Unlist the reported assistants")
    def unlist_assistants(self, request, queryset):
        assistants = Assistant.objects.filter(pk__in=queryset.values("assistant_id"))
        count = _set_unlisted(assistants, unlisted=True)
        self.message_user(request, f"Unlisted {count} assistant(s).", messages.SUCCESS)


@admin.register(CanaryIncident)
class CanaryIncidentAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Answers withheld because they wrote their version's canary (apps/chat/generation.py)."""

    list_display = ("version", "message_id", "created_at")
    fields = ("version", "message_id", "withheld_text", "created_at")
    readonly_fields = fields
