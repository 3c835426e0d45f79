"""Knowledge in the admin: read-only. Uploads, ingestion and deletes go through the services (the pages)."""

from django.contrib import admin

from apps.core.admin import ReadOnlyAdminMixin
from apps.knowledge.models import Collection, Document, DocumentVersion


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Deletes too go through the pages' services: they remove the stored files."""


@admin.register(Collection)
class CollectionAdmin(ReadOnlyAdmin):
    list_display = ("name", "owner", "created_at")
    search_fields = ("name", "owner__username")


@admin.register(Document)
class DocumentAdmin(ReadOnlyAdmin):
    list_display = ("filename", "collection", "current_version", "updated_at")
    search_fields = ("filename",)


@admin.register(DocumentVersion)
class DocumentVersionAdmin(ReadOnlyAdmin):
    list_display = ("document", "number", "status", "chunks_embedded", "chunks_total", "hidden_count", "failure")
    list_filter = ("status",)
    exclude = ("text",)
