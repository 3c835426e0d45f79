from django.urls import path

from apps.assistants import views

app_name = "assistants"
urlpatterns = [
    path("", views.assistant_list, name="list"),
    path("new/", views.assistant_create_view, name="create"),
    path("gallery/", views.gallery, name="gallery"),
    path("<slug:slug>/edit/", views.assistant_edit, name="edit"),
    path("<slug:slug>/preview", views.assistant_preview, name="preview"),
    path("<slug:slug>/avatar/", views.assistant_avatar, name="avatar"),
    path("<slug:slug>/avatar.png", views.assistant_avatar_image, name="avatar_image"),
    path("<slug:slug>/share/issue/", views.share_issue, name="share_issue"),
    path("<slug:slug>/share/revoke/", views.share_revoke, name="share_revoke"),
    path("<slug:slug>/versions/<int:number>/publish/", views.version_publish, name="publish"),
    path("<slug:slug>/delete/", views.assistant_delete_view, name="delete"),
    path("<slug:slug>/report/", views.assistant_report_view, name="report"),
]
