from django.urls import path

from apps.finetune import views

app_name = "finetune"
urlpatterns = [
    # --- adapters ---
    path("adapters/", views.adapter_list, name="adapter_list"),
    path("adapters/upload/", views.adapter_upload_view, name="adapter_upload"),
    path("adapters/<int:adapter_id>/", views.adapter_detail, name="adapter_detail"),
    path("adapters/<int:adapter_id>/attach/", views.adapter_attach_view, name="adapter_attach"),
    path("adapters/<int:adapter_id>/evaluation/", views.adapter_evaluation, name="adapter_evaluation"),
    path("adapters/<int:adapter_id>/evaluation/run/", views.adapter_evaluate, name="adapter_evaluate"),
    path("adapters/<int:adapter_id>/arena/", views.adapter_arena, name="adapter_arena"),
    # --- end adapters ---
]
