"""The leaderboard, computed server-side from the rated votes and cached as one `LeaderboardSnapshot`
row per board (the public one, and one per user's own arena). Pages only read that row: a page load
never refits, and no vote ever goes to the browser.

Per version: the Bradley–Terry rating with its 95% bootstrap interval (apps.arena.ratings, with the
small `ARENA_BT_L2` prior so a version with a few one-sided votes stays finite), the rank from the
intervals (1 + the number of versions certainly better), its votes, wins, ties, losses and win rate
(a tie counts half), and the online Elo (K=4, in vote order) as a secondary column. Every rated vote
enters the fit, but only versions with at least `ARENA_MIN_VOTES` votes are ranked and shown in the
head-to-head matrix; the others are listed as not yet ranked. The public board leaves out versions whose
assistant is no longer public and listed (from its next refresh on).

The refresh runs in a Celery task queued after a counted vote commits. It is debounced through a Redis
key: the first vote sets it and queues the task a moment later; votes arriving meanwhile find the key
and queue nothing; the task clears the key before it reads the votes, so a vote landing during a
refresh queues the next one. The public refresh also re-runs the outlier test (apps.arena.hygiene).
Its cost at 50 versions and 100,000 votes is bench/ratings.py's: about 2 s alone, 5 s with the cores
shared (bench/results_ratings.md). Against the real database (bench/arena.py, bench/results_arena.md, on
the shared 2-core machine at load ~6) the whole refresh, reading the votes included, took 5–6 s; it also
renders the board into the cache (the head-to-head matrix is up to versions² cells), so a page load reads
one row and serves the board from the cache in ~22 ms, the first reader after a refresh too. Fetching
every vote as JSON and computing Elo from it, as Open WebUI's page does, took ~4 s before any browser work.
"""

from collections import defaultdict

from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from apps.arena.hygiene import voter_agreements
from apps.arena.models import RATING_WINNERS, LeaderboardSnapshot, Mode, Outcome, VoterFlag
from apps.arena.ratings import bootstrap_intervals, online_elo, ranks_from_intervals
from apps.arena.selectors import rated_battles
from apps.assistants.models import AssistantVersion
from apps.chat.live import redis_client

ELO_K = 4.0
BOOTSTRAP_SEED = 0  # the same votes always give the same intervals


def _refresh_key(mode: str, owner_id: int | None) -> str:
    return f"atelier:arena:refresh:{mode}:{owner_id or 'all'}"


def leaderboard_refresh_claim(*, mode: str, owner_id: int | None) -> bool:
    """True for the first vote since the last refresh started: it queues the refresh."""
    return bool(redis_client().set(_refresh_key(mode, owner_id), "1", nx=True, ex=settings.ARENA_REFRESH_LOCK_SECONDS))


def leaderboard_compute(*, mode: str, owner=None) -> dict:
    """The board's payload from every rated vote in it."""
    battles = list(
        rated_battles(mode=mode, owner=owner).values_list("version_a_id", "version_b_id", "vote")
    )  # oldest first: the Elo's order
    rating_votes = [(str(a), str(b), RATING_WINNERS[Outcome(vote)]) for a, b, vote in battles]
    l2, rounds, min_votes = settings.ARENA_BT_L2, settings.ARENA_BOOTSTRAP_ROUNDS, settings.ARENA_MIN_VOTES
    intervals = bootstrap_intervals(rating_votes, rounds=rounds, seed=BOOTSTRAP_SEED, l2=l2) if rating_votes else {}
    elo = online_elo(rating_votes, k=ELO_K)

    record: dict[int, dict[str, int]] = defaultdict(lambda: {"votes": 0, "wins": 0, "ties": 0, "losses": 0})
    head_to_head: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0])  # (a, b) -> [a's score, votes]
    for a, b, vote in battles:
        score_a = {"a": 1.0, "b": 0.0}.get(vote, 0.5)
        for version, score in ((a, score_a), (b, 1.0 - score_a)):
            record[version]["votes"] += 1
            record[version]["wins" if score == 1.0 else "losses" if score == 0.0 else "ties"] += 1
        for first, second, score in ((a, b, score_a), (b, a, 1.0 - score_a)):
            head_to_head[(first, second)][0] += score
            head_to_head[(first, second)][1] += 1

    versions = AssistantVersion.objects.filter(pk__in=record).select_related("assistant").in_bulk()
    # The public board names only versions still public and listed; their votes inform the fit regardless.
    shown = [v for v in record if mode == Mode.PERSONAL or versions[v].assistant.listed]
    ranked_ids = [v for v in shown if record[v]["votes"] >= min_votes]
    ranks = ranks_from_intervals({str(v): intervals[str(v)] for v in ranked_ids})
    rows = []
    for version_id in shown:
        counts, version = record[version_id], versions[version_id]
        low, rating, high = intervals[str(version_id)]
        rows.append(
            {
                "version_id": version_id,
                "label": f"{version.name} v{version.number}",
                "assistant": version.assistant.slug,
                "rating": round(rating, 1),
                "low": round(low, 1),
                "high": round(high, 1),
                "rank": ranks.get(str(version_id)),
                "elo": round(elo[str(version_id)], 1),
                **counts,
                "win_rate": round((counts["wins"] + 0.5 * counts["ties"]) / counts["votes"], 3),
                "win_percent": round(100 * (counts["wins"] + 0.5 * counts["ties"]) / counts["votes"]),
            }
        )
    rows.sort(key=lambda row: (row["rank"] is None, row["rank"] or 0, -row["rating"]))
    ranked_rows = [row for row in rows if row["rank"] is not None]
    matrix = [
        {
            "label": row["label"],
            "cells": [
                _matrix_cell(head_to_head.get((row["version_id"], column["version_id"]))) for column in ranked_rows
            ],
        }
        for row in ranked_rows
    ]
    return {
        "votes": len(battles),
        "min_votes": min_votes,
        "l2": l2,
        "rounds": rounds,
        "rows": rows,
        "matrix": {"labels": [row["label"] for row in ranked_rows], "rows": matrix},
    }


def _matrix_cell(score_and_votes: list[float] | None) -> dict | None:
    """The row's win rate against the column, ready to show: percent, and a shade class 0–10."""
    if score_and_votes is None:
        return None
    rate = score_and_votes[0] / score_and_votes[1]
    return {
        "rate": round(rate, 3),
        "percent": round(100 * rate),
        "shade": round(10 * rate),
        "votes": score_and_votes[1],
    }


def leaderboard_context(snapshot: LeaderboardSnapshot | None) -> dict:
    """What the board's template needs: the snapshot (rows and matrix come ready to show) and the chart."""
    if snapshot is None:
        return {"board": None}
    rows = snapshot.payload["rows"]
    chart = {
        "labels": [row["label"] for row in rows],
        "intervals": [[row["low"], row["high"]] for row in rows],
        "ratings": [row["rating"] for row in rows],
    }
    return {"board": snapshot.payload, "snapshot": snapshot, "chart": chart}


def leaderboard_refresh(*, mode: str, owner=None) -> LeaderboardSnapshot:
    """Recompute one board from all its rated votes and store it; the public one also re-tests voters."""
    owner_id = owner.pk if owner is not None else None
    redis_client().delete(_refresh_key(mode, owner_id))  # votes from now on queue the next refresh
    payload = leaderboard_compute(mode=mode, owner=owner)
    snapshot, _ = LeaderboardSnapshot.objects.update_or_create(
        mode=mode, owner=owner, defaults={"computed_at": timezone.now(), "payload": payload}
    )
    # Rendering the board puts it in the shared cache ({% cache %} keyed by the snapshot), so no reader waits.
    render_to_string("arena/_board.html", leaderboard_context(snapshot))
    if mode == Mode.PUBLIC:
        voters_flag_outliers()
    return snapshot


@transaction.atomic
def voters_flag_outliers() -> list[VoterFlag]:
    """Flag users whose rated public votes disagree with the crowd beyond chance (apps.arena.hygiene)."""
    votes = rated_battles(mode=Mode.PUBLIC).values_list("user_id", "version_a_id", "version_b_id", "vote")
    flags = []
    for agreement in voter_agreements(votes):
        if (
            agreement.votes_compared >= settings.ARENA_OUTLIER_MIN_VOTES
            and agreement.p_value < settings.ARENA_OUTLIER_ALPHA
        ):
            flag, _ = VoterFlag.objects.update_or_create(
                user_id=agreement.user_id,
                defaults={
                    "votes_compared": agreement.votes_compared,
                    "agreements": agreement.agreements,
                    "expected_agreement": agreement.expected_agreement,
                    "p_value": agreement.p_value,
                    "flagged_at": timezone.now(),
                },
            )
            flags.append(flag)
    return flags
