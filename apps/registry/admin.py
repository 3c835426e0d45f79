from django.contrib import admin

from apps.registry.models import BaseModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "variant", "kind", "status", "perplexity", "context_length", "updated_at")
    list_filter = ("kind", "status")
    readonly_fields = [field.name for field in BaseModel._meta.fields]

    def has_add_permission(self, request):
        return False  # rows come from `manage.py bootstrap_models`, which builds and verifies the files
