from django.urls import path

from apps.assistants import views

app_name = "assistants"
urlpatterns = [
    path("", views.assistant_list, name="list"),
    path("gallery/", views.gallery, name="gallery"),
]
