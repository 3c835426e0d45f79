from django.urls import path

from apps.core import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("status", views.status, name="status"),
    path("healthz", views.healthz, name="healthz"),
    path("out", views.outbound, name="outbound"),
]
