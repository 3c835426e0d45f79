from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "apps.knowledge"
