"""Thin Celery wrappers around the arena services. Answers stream on the `chat` queue, like chat's."""

from celery import shared_task
from django.contrib.auth import get_user_model

from apps.arena.generation import battle_answer_generate, battle_answers_fail_abandoned
from apps.arena.leaderboard import leaderboard_refresh


@shared_task(name="arena.battle_answer_generate", queue="chat")
def battle_answer_generate_task(answer_id: str) -> str:
    return battle_answer_generate(answer_id=answer_id)


@shared_task(name="arena.leaderboard_refresh")
def leaderboard_refresh_task(mode: str, owner_id: int | None) -> int:
    owner = get_user_model().objects.get(pk=owner_id) if owner_id is not None else None
    return leaderboard_refresh(mode=mode, owner=owner).payload["votes"]


@shared_task(name="arena.battle_answers_fail_abandoned")
def battle_answers_fail_abandoned_task() -> int:
    """Run by beat (CELERY_BEAT_SCHEDULE): answers whose worker vanished become failed."""
    return battle_answers_fail_abandoned()
