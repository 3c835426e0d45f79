from django.urls import path

from apps.chat import views

app_name = "chat"
urlpatterns = [
    path("chats/", views.conversation_list_view, name="list"),
    path("assistants/<slug:slug>/chat/", views.conversation_start, name="start"),
    path("s/<str:token>/", views.share_start, name="share"),
    path("snapshot/<str:token>/", views.snapshot, name="snapshot"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("c/<uuid:conversation_id>/send", views.message_send, name="send"),
    path("c/<uuid:conversation_id>/rename", views.conversation_rename, name="rename"),
    path("c/<uuid:conversation_id>/delete", views.conversation_delete, name="delete"),
    path("c/<uuid:conversation_id>/snapshot", views.conversation_snapshot, name="snapshot_manage"),
    path("c/<uuid:conversation_id>/export.<str:fmt>", views.conversation_export, name="export"),
    path("m/<uuid:message_id>/events", views.message_events, name="events"),
    path("m/<uuid:message_id>/tokens", views.message_tokens, name="tokens"),
    path("m/<uuid:message_id>/stop", views.message_stop, name="stop"),
    path("m/<uuid:message_id>/regenerate", views.message_regenerate, name="regenerate"),
    path("m/<uuid:message_id>/edit", views.message_edit, name="edit"),
    path("m/<uuid:message_id>/branch", views.branch_switch, name="branch"),
    path("playground/", views.playground, name="playground"),
]
