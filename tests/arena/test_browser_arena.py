"""The arena in a real browser: a user runs a battle, both answers stream side by side, a vote before
they finish is refused, the vote reveals the names, and the leaderboard shows the intervals.

Headless Debian chromium (Playwright) against the real stack (uvicorn, the Celery worker, Redis,
Postgres, the inference server with the real SmolLM2). Screenshots in var/test-artifacts/<test name>/.
"""

import os
import random
import re
import time

import pytest
from django.db import transaction
from playwright.sync_api import expect

from apps.arena.models import BattleAnswer, Mode, Outcome
from apps.arena.services import battle_start, battle_vote
from apps.assistants.models import Visibility
from tests.browser import login
from tests.conftest import celery_worker
from tests.factories import PASSWORD, make_assistant, make_user

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
STORY = "Write a long story about a lighthouse keeper and a storm."
NAMES = ("Quillfeather", "Marblebrook")


def _earlier_votes(count: int) -> None:
    """Votes by another user, decided before this test (their answers written directly), so the board
    has more than one vote and real intervals."""
    voter = make_user("earlier")
    for seed in range(count):
        with transaction.atomic():  # answered before the commit queues them: the worker skips them
            battle = battle_start(user=voter, mode=Mode.PUBLIC, prompt="Hi", rng=random.Random(seed))
            BattleAnswer.objects.filter(turn__battle=battle).update(status="done", content="Hello.")
        battle_vote(battle=battle, user=voter, outcome=[Outcome.A, Outcome.B, Outcome.TIE][seed % 3])


def test_a_blind_battle_streams_side_by_side_refuses_an_early_vote_reveals_names_and_ranks(
    web_server, browser, artifacts_dir, models_ready
):
    builder = make_user("builder")
    for name in NAMES:
        make_assistant(builder, name=name, visibility=Visibility.PUBLIC, temperature=0.8, max_tokens=160)
    make_user("vera")
    # The session's worker runs one task at a time; a second one on the chat queue lets both sides
    # stream at once, as the product's threaded chat worker does.
    with celery_worker(f"arena-{os.getpid()}", queues=("chat",)):
        _battle_in_the_browser(web_server, browser, artifacts_dir)


def _battle_in_the_browser(web_server, browser, artifacts_dir) -> None:
    _earlier_votes(6)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    login(page, web_server, "vera", PASSWORD)

    # 1. Start a battle in the public arena.
    page.goto(f"{web_server}/arena/")
    page.fill("#prompt-public", STORY)
    page.click("[data-arena-go=public]")
    page.wait_for_url("**/arena/b/**")

    # 2. Both answers stream side by side, anonymously.
    answers = page.locator("article.arena-answer")
    expect(answers).to_have_count(2)
    for side in ("a", "b"):
        expect(page.locator(f"article[data-side={side}] [data-body]")).not_to_be_empty(timeout=90_000)
    expect(page.locator("article.arena-answer.is-streaming")).to_have_count(2)  # both at once
    boxes = [answers.nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and abs(boxes[0]["y"] - boxes[1]["y"]) < 2
    assert [answers.nth(i).locator("[data-side-name]").inner_text() for i in range(2)] == ["Assistant A", "Assistant B"]
    assert not any(name in page.content() for name in NAMES)
    page.screenshot(path=artifacts_dir / "1-streaming-side-by-side.png", full_page=True)

    # 3. A vote before both finish is refused (and the page goes on following the answers).
    assert page.locator("article.arena-answer[data-live]").count() >= 1, "both answers finished before the vote"
    page.click("[data-vote=a]")
    expect(page.locator(".flash")).to_contain_text("Wait for both answers to finish")
    assert page.locator("[data-reveal]").count() == 0
    page.screenshot(path=artifacts_dir / "2-early-vote-refused.png", full_page=True)
    for side in ("a", "b"):
        expect(page.locator(f"article[data-side={side}] [data-status]")).to_have_text("Done", timeout=180_000)

    # 4. The vote reveals the names.
    page.click("[data-vote=a]")
    reveal = page.locator("[data-reveal]")
    expect(reveal).to_be_visible()
    revealed = {reveal.locator("[data-reveal-a]").inner_text(), reveal.locator("[data-reveal-b]").inner_text()}
    assert revealed == {f"{name} v1" for name in NAMES}
    assert page.locator("article[data-side=a] [data-side-name]").inner_text().startswith("Assistant A: ")
    page.screenshot(path=artifacts_dir / "3-names-revealed.png", full_page=True)

    # 5. The refresh task puts the vote (with the earlier ones) on the board, with intervals and their chart.
    deadline = time.monotonic() + 60
    page.goto(f"{web_server}/arena/leaderboard/")
    meta = page.locator("[data-board-meta]")
    while not (meta.count() and meta.inner_text().startswith("7 rated votes")) and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    rows = page.locator("[data-leaderboard] tbody tr")
    expect(rows).to_have_count(2)
    for i in range(2):
        low, high = (int(x) for x in re.findall(r"\d+", rows.nth(i).locator("[data-interval]").inner_text()))
        assert low < high
    chart_labels = page.evaluate("Chart.getChart(document.querySelector('[data-interval-chart]')).data.labels")
    assert sorted(chart_labels) == sorted(f"{name} v1" for name in NAMES)
    page.screenshot(path=artifacts_dir / "4-leaderboard.png", full_page=True)
    context.close()
