"""Reads for the arena, and the one place that decides which versions a user may battle and which
battles they may open (anything else is None, which views turn into a 404)."""

from collections import Counter

from django.db.models import F, Q, QuerySet

from apps.arena.models import Battle, BattleAnswer, LeaderboardSnapshot, Mode, Outcome
from apps.arena.sampler import pair_key
from apps.assistants.models import AssistantVersion, Visibility


def _public_current_versions() -> Q:
    return Q(
        assistant__visibility=Visibility.PUBLIC,
        assistant__unlisted=False,
        assistant__current_version=F("pk"),
    )


def arena_versions(*, mode: str, user) -> QuerySet[AssistantVersion]:
    """Public arena: the current versions of listed public assistants. My arena: every version of the
    user's own assistants, and the current versions of listed public ones."""
    allowed = _public_current_versions()
    if mode == Mode.PERSONAL:
        if not user.is_authenticated:
            return AssistantVersion.objects.none()
        allowed |= Q(assistant__owner=user)
    elif mode != Mode.PUBLIC:
        return AssistantVersion.objects.none()
    return (
        AssistantVersion.objects.filter(allowed)
        .select_related("assistant", "base_model")
        .order_by("assistant__slug", "-number")
    )


def draft_parent_pairs(*, versions: QuerySet[AssistantVersion]) -> set[tuple[int, int]]:
    """Each draft among `versions` with its parent, when the parent is among them too (as `pair_key`s)."""
    ids = set(versions.values_list("pk", flat=True))
    drafts = versions.filter(published_at__isnull=True, parent__isnull=False).values_list("pk", "parent_id")
    return {pair_key(draft, parent) for draft, parent in drafts if parent in ids}


def battle_scope(*, mode: str, owner=None) -> QuerySet[Battle]:
    """The battles behind one leaderboard: every public one, or one user's own arena."""
    battles = Battle.objects.filter(mode=mode)
    return battles.filter(user=owner) if mode == Mode.PERSONAL else battles


def rated_battles(*, mode: str, owner=None) -> QuerySet[Battle]:
    """Voted battles that count: sampled, not excluded; oldest vote first (the online Elo's order)."""
    return battle_scope(mode=mode, owner=owner).exclude(vote="").filter(excluded_reason="").order_by("voted_at", "pk")


def pair_vote_counts(*, mode: str, owner=None) -> dict[tuple[int, int], int]:
    """Rated votes per unordered pair of version ids, for the sampler."""
    rows = rated_battles(mode=mode, owner=owner).values_list("version_a_id", "version_b_id")
    return dict(Counter(pair_key(a, b) for a, b in rows))


def battle_get_for_user(*, battle_id, user) -> Battle | None:
    """Only the user who started a battle may open it."""
    if not user.is_authenticated:
        return None
    return (
        Battle.objects.select_related("version_a__assistant", "version_b__assistant")
        .filter(pk=battle_id, user=user)
        .first()
    )


def battle_answer_get_for_user(*, answer_id, user) -> BattleAnswer | None:
    if not user.is_authenticated:
        return None
    return BattleAnswer.objects.select_related("turn__battle").filter(pk=answer_id, turn__battle__user=user).first()


def battle_turns(*, battle: Battle) -> list[dict]:
    """Each turn with its two answers, A then B: [{"turn": BattleTurn, "answers": [a, b]}]."""
    answers = BattleAnswer.objects.filter(turn__battle=battle).select_related("turn").order_by("turn__number", "side")
    turns: dict[int, dict] = {}
    for answer in answers:
        turns.setdefault(answer.turn.number, {"turn": answer.turn, "answers": []})["answers"].append(answer)
    return [turns[number] for number in sorted(turns)]


def leaderboard_get(*, mode: str, owner=None) -> LeaderboardSnapshot | None:
    """The cached leaderboard (the refresh task writes it); None until the first vote is counted."""
    return LeaderboardSnapshot.objects.filter(mode=mode, owner=owner if mode == Mode.PERSONAL else None).first()


def preference_pairs_export(*, mode: str, owner=None) -> list[dict]:
    """Rated votes as TRL conversational preference rows (`prompt`, `chosen`, `rejected`).

    A win gives one row: the first prompt, then each side's whole continuation (its answers, with the
    user's later prompts between them), the winner's as `chosen`. Ties and both-bad say neither side
    is preferred and give nothing; excluded and named battles give nothing.
    """
    battles = rated_battles(mode=mode, owner=owner).filter(vote__in=[Outcome.A, Outcome.B])
    answers = (
        BattleAnswer.objects.filter(turn__battle__in=battles)
        .select_related("turn")
        .order_by("turn__battle_id", "turn__number", "side")
    )
    by_battle: dict = {}
    for answer in answers:
        by_battle.setdefault(answer.turn.battle_id, []).append(answer)
    rows = []
    for battle in battles:
        answers_of = by_battle.get(battle.pk, [])
        if not answers_of:
            continue
        sides = {side: _continuation(answers_of, side) for side in ("a", "b")}
        winner, loser = ("a", "b") if battle.vote == Outcome.A else ("b", "a")
        first_prompt = answers_of[0].turn.prompt
        rows.append(
            {
                "prompt": [{"role": "user", "content": first_prompt}],
                "chosen": sides[winner],
                "rejected": sides[loser],
            }
        )
    return rows


def _continuation(answers: list[BattleAnswer], side: str) -> list[dict]:
    messages = []
    for answer in answers:
        if answer.side != side:
            continue
        if answer.turn.number > 1:
            messages.append({"role": "user", "content": answer.turn.prompt})
        messages.append({"role": "assistant", "content": answer.content})
    return messages
