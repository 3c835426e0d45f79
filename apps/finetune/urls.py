from django.urls import path

from apps.finetune import views

app_name = "finetune"
urlpatterns = [
    # --- jobs ---
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("jobs/<int:pk>/progress.json", views.job_progress, name="job_progress"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<int:pk>/retry/", views.job_retry, name="job_retry"),
    path("jobs/train/<int:version_pk>/", views.job_create, name="job_create"),
    # --- end jobs ---
]
