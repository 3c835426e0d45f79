from django.urls import path

from apps.arena import views

app_name = "arena"
urlpatterns = [
    path("", views.arena_index, name="index"),
    path("battles/", views.battle_create, name="create"),
    path("b/<uuid:battle_id>/", views.battle_detail, name="battle"),
    path("b/<uuid:battle_id>/turn", views.battle_turn, name="turn"),
    path("b/<uuid:battle_id>/vote", views.battle_vote_view, name="vote"),
    path("answers/<uuid:answer_id>/events", views.answer_events, name="events"),
    path("leaderboard/", views.leaderboard_public, name="leaderboard"),
    path("leaderboard/mine/", views.leaderboard_mine, name="leaderboard_mine"),
    path("export/<str:mode>.jsonl", views.preferences_export, name="export"),
]
