"""The learning loop in a real browser (headless Debian chromium) against the real stack. Labelers' rankings and
the owner's arena votes are seeded through the services; then, in the browser, the owner opens "Improve this
assistant", narrows and widens the sources, confirms once, watches the job on its page until the worker has
trained it with the real SmolLM2, follows the dashboard's notice to the loop page, sees the draft beside its
parent (ratings and chart, after My arena votes), and publishes it. All under the strict CSP. The loop page's
screenshot is the README's (docs/loop.png is copied from var/test-artifacts/)."""

import random

import pytest
from django.db.models import Q
from playwright.sync_api import expect

from apps.arena.leaderboard import leaderboard_refresh
from apps.arena.models import Battle, BattleAnswer, Mode
from apps.arena.services import battle_start, battle_vote
from apps.assistants.selectors import chat_model_default
from apps.assistants.services import assistant_config_of, assistant_update
from apps.loop.models import LoopRun
from tests.browser import browser_watch, login
from tests.factories import PASSWORD, make_assistant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PROMPTS = ["Name a fruit.", "Describe the sea.", "Name a colour."]


def _answers_done(battle, timeout: float = 120) -> None:
    """Wait for the worker to finish both answers of each turn (the real model writes them)."""
    import time

    deadline = time.monotonic() + timeout
    while BattleAnswer.objects.filter(turn__battle=battle).exclude(status__in=BattleAnswer.TERMINAL).exists():
        assert time.monotonic() < deadline, "the battle's answers did not finish"
        time.sleep(0.3)


def test_improve_train_draft_and_publish_in_the_browser(
    web_server, browser, artifacts_dir, models_ready, owner, ranked_set
):
    assistant = make_assistant(owner, name="Quillfeather", base_model=chat_model_default(), max_tokens=24)
    v1 = assistant.current_version
    v2 = assistant_update(
        assistant=assistant, actor=owner, config=assistant_config_of(version=v1), visibility=assistant.visibility
    )
    # Seeded through the services: three labelers rank every task (shortest first); the owner votes once.
    ranked_set(
        PROMPTS,
        versions=[v1, v2],
        answers=lambda p: [f"{p} A long and winding answer.", f"{p} Short.", f"{p} A middling one."],
        order=lambda p: [1, 2, 0],
    )
    named = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Hi?", version_a=v2, version_b=v1)
    _answers_done(named)
    # Known, different answers (two samples of one tiny configuration may coincide, or name the assistant).
    BattleAnswer.objects.filter(turn__battle=named, side="a").update(content="Hello.")
    BattleAnswer.objects.filter(turn__battle=named, side="b").update(content="Hello there, how are you today?")
    battle_vote(battle=named, user=owner, outcome="a")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = browser_watch(context)
    page = context.new_page()
    page.set_default_timeout(60_000)
    login(page, web_server, "olive", PASSWORD)

    # 1. From the assistant's page to "Improve this assistant": 9 labeling pairs and 1 arena pair.
    page.goto(f"{web_server}/assistants/{assistant.slug}/edit/")
    page.click("[data-improve]")
    expect(page.locator("[data-pair-count]")).to_have_text("10")
    expect(page.locator("[data-pair-source=arena]")).to_have_text("1")
    page.uncheck("[data-loop-filters] input[name=sources][value=arena]")
    page.click("[data-loop-filters] button[type=submit]")
    expect(page.locator("[data-pair-count]")).to_have_text("9")
    page.check("[data-loop-filters] input[name=sources][value=arena]")
    page.click("[data-loop-filters] button[type=submit]")
    expect(page.locator("[data-pair-count]")).to_have_text("10")
    page.screenshot(path=artifacts_dir / "1-improve.png", full_page=True)

    # 2. One confirmation: the dataset version and the DPO job; the job page follows it to the end.
    page.click("[data-loop-start]")
    page.wait_for_url("**/jobs/*/")
    expect(page.locator("[data-field=status]")).to_have_text("Succeeded", timeout=600_000)
    page.screenshot(path=artifacts_dir / "2-job.png", full_page=True)
    run = LoopRun.objects.select_related("draft", "dataset_version").get(assistant=assistant)
    assert run.dataset_version.example_count == 10 and run.parent == v2
    draft = run.draft
    assert draft is not None and draft.parent == v2 and draft.is_draft and draft.adapter is not None
    assistant.refresh_from_db()
    assert assistant.current_version == v2  # nothing changed for users yet

    # 3. The dashboard says a draft awaits review; its link opens the loop page.
    page.goto(f"{web_server}/")
    notice = page.locator(f"[data-draft='{assistant.slug}-{draft.number}'] a")
    expect(notice).to_be_visible()
    notice.click()
    expect(page.locator(f"tr[data-version='{draft.number}']")).to_have_attribute("data-state", "draft")

    # 4. My arena votes (seeded through the services, answered by the real model): the draft wins its battles.
    rng = random.Random(0)
    for _ in range(8):
        battle = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Name a fruit.", rng=rng)
        _answers_done(battle)
        versions = {battle.version_a_id: "a", battle.version_b_id: "b"}
        winner = versions.get(draft.pk) or ("a" if battle.version_a_id == v2.pk else "b")
        battle_vote(battle=battle, user=owner, outcome=winner)
    rated = Battle.objects.filter(user=owner, named=False)
    assert rated.filter(excluded_reason="").filter(Q(version_a=draft) | Q(version_b=draft)).exists(), list(
        rated.values_list("version_a__number", "version_b__number", "excluded_reason", "excluded_detail")
    )
    leaderboard_refresh(mode=Mode.PERSONAL, owner=owner)
    page.reload()
    expect(page.locator(f"tr[data-version='{draft.number}'] [data-rating]")).not_to_have_text("—")
    expect(page.locator("canvas[data-loop-chart]")).to_be_visible()
    page.wait_for_function("() => window.Chart && Object.keys(window.Chart.instances).length === 1")
    page.screenshot(path=artifacts_dir / "loop.png", full_page=True)

    # 5. Publish: the draft becomes the current version.
    page.click(f"[data-publish='{draft.number}']")
    expect(page.locator(f"tr[data-version='{draft.number}']")).to_have_attribute("data-state", "current")
    assistant.refresh_from_db()
    assert assistant.current_version == draft

    assert watch.violations == [] and watch.page_errors == [] and watch.console_errors == []
    assert watch.foreign_requests() == [] and watch.documents_without_csp() == []
    context.close()
