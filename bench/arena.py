"""The arena's leaderboard against the real database: python -m bench.arena.

50 assistant versions and 100,000 rated votes in Postgres (an embedded one under var/bench/arena, its
own var dir). Timed, side by side in one run:
- Atelier's refresh (`leaderboard_refresh`: read the rated votes, Bradley–Terry fit, 1,000 bootstrap
  rounds, online Elo, win rates, head-to-head matrix, write the snapshot row): what the Celery task
  does after votes arrive.
- Atelier's page load (`GET /arena/leaderboard/` through Django's test client: middleware, one
  snapshot read, the template): what a reader waits for.
- Open WebUI's approach (#11745): the leaderboard page fetches every feedback row as JSON and computes
  Elo (fixed K=32) in the browser. Timed here as the server half (all votes through the ORM, serialized
  to JSON) plus the same Elo loop over the parsed JSON in Python, a lower bound on the browser's cost.
Writes bench/results_arena.md and prints it. BENCH_REPEATS (default 3) refreshes, PAGE_LOADS page loads.
"""

import json
import os
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("ATELIER_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "bench" / "arena"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

RESULTS = Path(__file__).resolve().parent / "results_arena.md"
VERSIONS, VOTES = 50, 100_000
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
PAGE_LOADS = 50


def _seed() -> None:
    """50 public assistants and 100,000 rated votes between random pairs, skill-driven, ties included."""
    from apps.accounts.models import User
    from apps.arena.models import Battle, BattleTurn, LeaderboardSnapshot, Mode
    from apps.assistants.models import Assistant, AssistantVersion, Visibility
    from apps.registry.models import BaseModel

    LeaderboardSnapshot.objects.all().delete()
    BattleTurn.objects.all().delete()
    Battle.objects.all().delete()
    Assistant.objects.update(current_version=None)
    AssistantVersion.objects.all().delete()
    Assistant.objects.all().delete()
    base, _ = BaseModel.objects.get_or_create(
        name="bench-model", variant="fp32", defaults={"kind": "chat", "source_package": "bench"}
    )
    user, _ = User.objects.get_or_create(username="bench-voter")
    assistants = Assistant.objects.bulk_create(
        Assistant(owner=user, slug=f"bench-{i}", visibility=Visibility.PUBLIC) for i in range(VERSIONS)
    )
    versions = AssistantVersion.objects.bulk_create(
        AssistantVersion(assistant=a, number=1, name=f"Bench {i}", base_model=base) for i, a in enumerate(assistants)
    )
    for assistant, version in zip(assistants, versions, strict=True):
        assistant.current_version = version
    Assistant.objects.bulk_update(assistants, ["current_version"])
    rng = random.Random(0)  # noqa: S311 (synthetic votes, reproducible)
    strength = {v.pk: rng.gauss(0, 0.5) for v in versions}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    battles = []
    for n in range(VOTES):
        a, b = rng.sample(versions, 2)
        p = 1 / (1 + 10 ** (strength[b.pk] - strength[a.pk]))
        u = rng.random()
        vote = "a" if u < p - 0.1 else "b" if u > p + 0.1 else rng.choice(["tie", "both_bad"])
        battles.append(
            Battle(
                mode=Mode.PUBLIC, user=user, version_a=a, version_b=b, sampling_probability=1 / 1225,
                vote=vote, voted_at=start + timedelta(seconds=n),
            )
        )  # fmt: skip
    Battle.objects.bulk_create(battles, batch_size=5000)


def _open_webui_style() -> float:
    """All feedback to the client as JSON, then Elo with K=32 over it (their leaderboard page)."""
    from apps.arena.models import Battle

    started = time.perf_counter()
    rows = list(Battle.objects.exclude(vote="").values("id", "version_a_id", "version_b_id", "vote", "voted_at"))
    body = json.dumps(rows, default=str)
    ratings: dict[int, float] = {}
    for row in json.loads(body):
        a, b = row["version_a_id"], row["version_b_id"]
        ra, rb = ratings.get(a, 1000.0), ratings.get(b, 1000.0)
        expected = 1 / (1 + 10 ** ((rb - ra) / 400))
        score = {"a": 1.0, "b": 0.0}.get(row["vote"], 0.5)
        ratings[a], ratings[b] = ra + 32 * (score - expected), rb - 32 * (score - expected)
    return time.perf_counter() - started


def main() -> None:
    from config import embedded

    with embedded.running_services():
        import django

        django.setup()
        from django.core.management import call_command
        from django.test import Client
        from django.test.utils import setup_test_environment

        from apps.arena.leaderboard import leaderboard_refresh
        from apps.arena.models import Mode
        from bench.run import cpu_model, say

        setup_test_environment()  # the test client's host and a locmem mail backend
        call_command("migrate", verbosity=0)
        say("seeding 50 versions and 100,000 votes")
        _seed()
        refresh, theirs, pages, first_pages = [], [], [], []
        client = Client()
        for repeat in range(REPEATS):
            say(f"round {repeat + 1}/{REPEATS}")
            started = time.perf_counter()
            snapshot = leaderboard_refresh(mode=Mode.PUBLIC)
            refresh.append(time.perf_counter() - started)
            theirs.append(_open_webui_style())
            started = time.perf_counter()
            client.get("/arena/leaderboard/")  # the first reader after a refresh: the task already cached the board
            first_pages.append(time.perf_counter() - started)
            for _ in range(PAGE_LOADS):
                started = time.perf_counter()
                response = client.get("/arena/leaderboard/")
                pages.append(time.perf_counter() - started)
                assert response.status_code == 200
        payload = snapshot.payload
        assert payload["votes"] == VOTES and len(payload["rows"]) == VERSIONS
        page_ms = statistics.median(pages) * 1000
        page_p95 = sorted(pages)[int(0.95 * len(pages))] * 1000
        ours_refresh, theirs_load = statistics.median(refresh), statistics.median(theirs)
        lines = [
            "# Arena leaderboard: refresh and page load against the real database",
            "",
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {cpu_model()} · {os.cpu_count()} CPUs · "
            f"{VERSIONS} versions, {VOTES:,} rated votes in Postgres · medians of {REPEATS} refreshes and "
            f"{REPEATS * PAGE_LOADS} page loads",
            "",
            "| What | Atelier | Open WebUI's approach | Ratio |",
            "|---|---:|---:|---:|",
            f"| A reader opens the leaderboard | {page_ms:.1f} ms (p95 {page_p95:.1f} ms), one snapshot row | "
            f"{theirs_load * 1000:.0f} ms: every vote as JSON + Elo, a lower bound | "
            f"{theirs_load * 1000 / page_ms:.0f}× |",
            f"| The first reader after a refresh (the refresh rendered the board into the cache) | "
            f"{statistics.median(first_pages) * 1000:.0f} ms | | |",
            f"| After votes arrive (Celery task) | {ours_refresh:.2f} s: read votes, Bradley–Terry + "
            f"{payload['rounds']:,} bootstrap rounds, Elo, matrix, write, render into the cache | "
            "n/a (recomputed on every page load) | |",
            "",
            "Targets:",
            "",
            f"- Page load from the cache under 100 ms: **{'MET' if page_ms < 100 else 'NOT MET'}**, {page_ms:.1f} ms",
            f"- Refresh (fit + 1,000 bootstrap rounds, with the database read) under 10 s: "
            f"**{'MET' if ours_refresh < 10 else 'NOT MET'}**, {ours_refresh:.2f} s",
            "",
            f"Raw refreshes (s): {', '.join(f'{s:.2f}' for s in refresh)}; Open WebUI-style loads (s): "
            f"{', '.join(f'{s:.2f}' for s in theirs)}. Load average at the end: {os.getloadavg()[0]:.2f}.",
            "",
        ]
        text = "\n".join(lines)
        RESULTS.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
