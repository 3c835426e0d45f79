from django.urls import path

from apps.loop import views

app_name = "loop"
urlpatterns = [
    path("<slug:slug>/improve/", views.improve, name="improve"),
    path("<slug:slug>/loop/", views.history, name="history"),
]
