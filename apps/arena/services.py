"""Writes for the arena: start a battle (sampled or named), add a turn, and vote once.

A battle's prompt is saved with both of its answers before they are queued, so a model failure never
loses the user's words. The vote is taken under a row lock on the battle: it is refused before every
answer has finished and after a first vote, and it decides then whether the battle counts (named,
identity leak, daily cap, failed answer), keeping the reason. After the vote commits, the
leaderboard refresh is queued (debounced, see apps.arena.leaderboard).
"""

import random
from datetime import datetime, time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.arena.hygiene import identity_leak
from apps.arena.leaderboard import leaderboard_refresh_claim
from apps.arena.models import Battle, BattleAnswer, BattleTurn, Exclusion, Mode, Outcome, Side
from apps.arena.sampler import NotEnoughVersions, pair_sample
from apps.arena.selectors import arena_versions, draft_parent_pairs, pair_vote_counts
from apps.arena.tasks import battle_answer_generate_task, leaderboard_refresh_task
from apps.assistants.models import AssistantVersion
from apps.core.unicode import unicode_clean

MAX_PROMPT_CHARS = 8_000
MAX_TURNS = 20


class ArenaError(Exception):
    """A domain error with a message fit for the person who caused it."""


def _require_user(user) -> None:
    if not user.is_authenticated:
        raise ArenaError("Sign in to battle and vote in the arena.")


def _clean_prompt(prompt: str) -> str:
    prompt = unicode_clean(prompt, source="arena prompt").text.strip()
    if not prompt:
        raise ArenaError("Write a prompt for both assistants.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ArenaError(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    return prompt


def _turn_create(*, battle: Battle, number: int, prompt: str) -> BattleTurn:
    turn = BattleTurn.objects.create(battle=battle, number=number, prompt=prompt)
    answers = [BattleAnswer.objects.create(turn=turn, side=side) for side in Side.values]
    for answer in answers:
        transaction.on_commit(lambda answer_id=str(answer.pk): battle_answer_generate_task.delay(answer_id))
    return turn


@transaction.atomic
def battle_start(
    *,
    user,
    mode: str,
    prompt: str,
    version_a: AssistantVersion | None = None,
    version_b: AssistantVersion | None = None,
    rng: random.Random | None = None,
) -> Battle:
    """A battle with its first prompt. Without versions the sampler picks them; with both, it is a
    named battle (stored and shown, never rated)."""
    _require_user(user)
    if mode not in Mode.values:
        raise ArenaError("Choose the public arena or your own.")
    prompt = _clean_prompt(prompt)
    allowed = arena_versions(mode=mode, user=user)
    if version_a is not None or version_b is not None:
        if version_a is None or version_b is None:
            raise ArenaError("Pick both versions, or neither to let the arena choose.")
        if version_a.pk == version_b.pk:
            raise ArenaError("Pick two different versions.")
        if allowed.filter(pk__in=[version_a.pk, version_b.pk]).count() != 2:
            raise ArenaError("You can only battle versions you may use in this arena.")
        battle = Battle.objects.create(mode=mode, user=user, version_a=version_a, version_b=version_b, named=True)
    else:
        try:
            pair = pair_sample(
                versions=list(allowed.values_list("pk", flat=True)),
                pair_votes=pair_vote_counts(mode=mode, owner=user),
                rng=rng or random.SystemRandom(),
                draft_parent_pairs=draft_parent_pairs(versions=allowed),
            )
        except NotEnoughVersions as error:
            raise ArenaError(str(error)) from error
        battle = Battle.objects.create(
            mode=mode,
            user=user,
            version_a_id=pair.left,
            version_b_id=pair.right,
            sampling_probability=pair.probability,
        )
    _turn_create(battle=battle, number=1, prompt=prompt)
    return battle


def _answers(battle: Battle) -> list[BattleAnswer]:
    return list(BattleAnswer.objects.filter(turn__battle=battle))


@transaction.atomic
def battle_turn_add(*, battle: Battle, prompt: str) -> BattleTurn:
    """The same next prompt to both sides, once both have answered the last one and before the vote."""
    battle = Battle.objects.select_for_update().get(pk=battle.pk)
    if battle.voted:
        raise ArenaError("This battle is decided; start a new one to keep comparing blind.")
    answers = _answers(battle)
    if not all(answer.finished for answer in answers):
        raise ArenaError("Wait for both answers to finish before the next prompt.")
    turns = len(answers) // 2
    if turns >= MAX_TURNS:
        raise ArenaError(f"A battle has at most {MAX_TURNS} turns; vote, then start a new one.")
    return _turn_create(battle=battle, number=turns + 1, prompt=_clean_prompt(prompt))


def _votes_today(*, user, now: datetime) -> int:
    start = timezone.make_aware(datetime.combine(timezone.localdate(now), time.min))
    return Battle.objects.filter(user=user, voted_at__gte=start).count()


def _exclusion(*, battle: Battle, answers: list[BattleAnswer], now: datetime) -> tuple[str, str]:
    if battle.named:
        return Exclusion.NAMED, "The user picked both versions."
    if any(answer.status != BattleAnswer.Status.DONE for answer in answers):
        return Exclusion.ANSWER_FAILED, "At least one answer failed."
    names = []
    for version in (battle.version_a, battle.version_b):
        names += [version.name, version.assistant.name, version.assistant.slug]
    leaked = identity_leak(texts=[answer.content for answer in answers], names=names)
    if leaked:
        return Exclusion.IDENTITY_LEAK, f"An answer names {leaked!r}."
    cap = settings.ARENA_VOTES_PER_DAY
    if _votes_today(user=battle.user, now=now) >= cap:
        return Exclusion.DAILY_CAP, f"Over the cap of {cap} votes a day."
    return "", ""


def leaderboard_refresh_queue(*, mode: str, owner_id: int | None) -> None:
    """After the vote commits: queue the board's refresh, unless one is already waiting (debounce)."""

    def queue() -> None:
        if leaderboard_refresh_claim(mode=mode, owner_id=owner_id):
            leaderboard_refresh_task.apply_async((mode, owner_id), countdown=settings.ARENA_REFRESH_DELAY_SECONDS)

    transaction.on_commit(queue)


@transaction.atomic
def battle_vote(*, battle: Battle, user, outcome: str) -> Battle:
    """The battle's one vote. Refused for anyone but its user, before every answer has finished, and
    after a first vote. Names are revealed from now on."""
    _require_user(user)
    if outcome not in Outcome.values:
        raise ArenaError("Choose A, B, a tie, or both bad.")
    battle = (
        Battle.objects.select_for_update(of=("self",))
        .select_related("version_a__assistant", "version_b__assistant")
        .get(pk=battle.pk)
    )
    if battle.user_id != user.pk:
        raise ArenaError("Only the person who ran a battle can vote on it.")
    if battle.voted:
        raise ArenaError("This battle already has its vote; a vote cannot be changed.")
    answers = _answers(battle)
    if not answers or not all(answer.finished for answer in answers):
        raise ArenaError("Wait for both answers to finish before voting.")
    now = timezone.now()
    battle.excluded_reason, battle.excluded_detail = _exclusion(battle=battle, answers=answers, now=now)
    battle.vote, battle.voted_at = outcome, now
    battle.save(update_fields=["vote", "voted_at", "excluded_reason", "excluded_detail"])
    if not battle.excluded_reason:
        leaderboard_refresh_queue(mode=battle.mode, owner_id=battle.user_id if battle.mode == Mode.PERSONAL else None)
    return battle
