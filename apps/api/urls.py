from django.urls import path, re_path

from apps.api import views

app_name = "api"
urlpatterns = [
    path("models", views.model_list, name="models"),
    path("models/<str:model>", views.model_detail, name="model"),
    path("chat/completions", views.chat_completions, name="chat_completions"),
    re_path(r"^(?P<rest>.*)$", views.not_found),
]
