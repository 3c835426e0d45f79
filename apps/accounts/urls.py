from django.urls import include, path

from apps.accounts import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("api-keys/", views.api_keys, name="api_keys"),
    path("settings/", views.account_settings, name="account_settings"),
    path("", include("django.contrib.auth.urls")),
]
