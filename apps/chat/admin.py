from django.contrib import admin

from apps.chat.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "status", "content", "error", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("__str__", "assistant", "owner", "share_token", "updated_at")
    list_filter = ("updated_at",)
    search_fields = ("title", "assistant__slug", "owner__username")
    readonly_fields = ("id", "owner", "session_key", "assistant", "share_token", "current_leaf", "snapshot_leaf")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("__str__", "conversation", "role", "status", "created_at")
    list_filter = ("role", "status")
    readonly_fields = ("id", "conversation", "parent", "assistant_version", "tokens", "context", "token_count")
