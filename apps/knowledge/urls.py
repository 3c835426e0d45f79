from django.urls import path

from apps.knowledge import views

app_name = "knowledge"
urlpatterns = [
    path("", views.collection_list, name="collections"),
    path("collections/<int:pk>/", views.collection_detail, name="collection"),
    path("collections/<int:pk>/delete/", views.collection_delete, name="collection_delete"),
    path("collections/<int:pk>/progress.json", views.collection_progress_json, name="progress"),
    path("collections/<int:pk>/search/", views.collection_search, name="search"),
    path("documents/<int:pk>/reingest/", views.document_reingest, name="reingest"),
    path("documents/<int:pk>/delete/", views.document_delete, name="document_delete"),
    path("versions/<int:pk>/cancel/", views.version_cancel, name="cancel"),
    path("versions/<int:pk>/retry/", views.version_retry, name="retry"),
    path("versions/<int:pk>/source/", views.version_source, name="source"),
    path("versions/<int:pk>/original/", views.version_original, name="original"),
    path("cited/<uuid:message_id>/<int:n>/", views.cited_passage, name="cited"),
    path("snapshot/<str:token>/cited/<uuid:message_id>/<int:n>/", views.snapshot_cited_passage, name="snapshot_cited"),
]
