from django.apps import AppConfig


class LoopConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.loop"
    verbose_name = "Learning loop"
