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
    # --- adapters ---
    path("adapters/", views.adapter_list, name="adapter_list"),
    path("adapters/upload/", views.adapter_upload, name="adapter_upload"),
    path("adapters/<int:adapter_id>/", views.adapter_detail, name="adapter_detail"),
    path("adapters/<int:adapter_id>/attach/", views.adapter_attach, name="adapter_attach"),
    path("adapters/<int:adapter_id>/evaluation/", views.adapter_evaluation, name="adapter_evaluation"),
    path("adapters/<int:adapter_id>/evaluation/run/", views.adapter_evaluate, name="adapter_evaluate"),
    path("adapters/<int:adapter_id>/arena/", views.adapter_arena, name="adapter_arena"),
    # --- jobs ---
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("jobs/<int:pk>/progress.json", views.job_progress, name="job_progress"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<int:pk>/retry/", views.job_retry, name="job_retry"),
    path("jobs/train/<int:version_pk>/", views.job_create, name="job_create"),
]
