from django.urls import path

from apps.finetune import views

app_name = "finetune"
urlpatterns = [
    path("", views.dataset_list, name="datasets"),
    path("datasets/upload/", views.dataset_upload, name="upload"),
    path("datasets/import/", views.task_set_import, name="import_task_set"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("versions/<int:pk>/override/", views.version_override, name="version_override"),
    path("curate/<uuid:message_id>/good/", views.curate_good, name="curate_good"),
    path("curate/<uuid:message_id>/edit/", views.curate_edit, name="curate_edit"),
]
