from django.urls import path

from apps.labeling import views

app_name = "labeling"
urlpatterns = [
    path("", views.home, name="home"),
    path("mine/", views.my_rankings, name="mine"),
    path("sets/<int:set_id>/next/", views.task_next, name="next"),
    path("tasks/<uuid:task_id>/", views.task_rank, name="task"),
    path("sets/new/", views.task_set_new, name="set_new"),
    path("sets/<int:set_id>/", views.task_set_admin, name="set_admin"),
    path("sets/<int:set_id>/progress/", views.task_set_progress, name="set_progress"),
    path("sets/<int:set_id>/cancel/", views.task_set_cancel_view, name="set_cancel"),
    path("sets/<int:set_id>/resume/", views.task_set_resume_view, name="set_resume"),
    path("sets/<int:set_id>/guidelines/", views.guideline_publish_view, name="guideline_publish"),
    path("sets/<int:set_id>/exclusions/", views.labeler_exclusion_view, name="exclusion"),
    path("sets/<int:set_id>/tasks/<uuid:task_id>/gold/", views.task_gold_view, name="gold"),
    path("sets/<int:set_id>/export/", views.task_set_export, name="export"),
]
