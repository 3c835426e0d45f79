from django.apps import AppConfig


class FinetuneConfig(AppConfig):
    name = "apps.finetune"
