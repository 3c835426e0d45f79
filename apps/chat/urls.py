from django.urls import path

from apps.chat import views

app_name = "chat"
urlpatterns = [
    path("chats/", views.conversation_list_view, name="list"),
    path("playground/", views.playground, name="playground"),
]
