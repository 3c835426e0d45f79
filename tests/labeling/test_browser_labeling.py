"""The labeling panel in a real browser (headless Debian chromium) against the real stack: an admin creates a task
set and the Celery worker generates its candidates with the real SmolLM2; a labeler ranks one task by dragging and
another by keyboard; the admin sees agreement and downloads the DPO file, which the fine-tune upload accepts.
Screenshots in var/test-artifacts/."""

import json

import pytest
from playwright.sync_api import expect

from apps.accounts.models import Role
from apps.assistants.selectors import chat_model_default
from apps.finetune.models import DatasetVersion
from apps.labeling.models import Ranking, TaskSet
from apps.labeling.selectors import export_rows
from apps.labeling.services import ranking_submit, task_claim_next
from tests.browser import browser_watch, login
from tests.factories import PASSWORD, make_assistant, make_user

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PROMPTS = ["Name a fruit and say why you like it.", "Describe the sea in one sentence."]


def _order(page) -> list[int]:
    return [int(x) for x in page.locator(".rank-item").evaluate_all("els => els.map(e => e.dataset.candidate)")]


def test_create_generate_rank_by_drag_and_keyboard_then_agreement_and_dpo_download(
    web_server, browser, artifacts_dir, models_ready
):
    admin = make_user("root", role=Role.ADMIN)
    ann, ben = (make_user(name, role=Role.LABELER) for name in ("ann", "ben"))
    assistant = make_assistant(admin, name="Candidate maker", base_model=chat_model_default(), max_tokens=24)
    # 1. The admin creates a task set from typed prompts; the worker generates 3 candidates per prompt.
    admin_context = browser.new_context(viewport={"width": 1280, "height": 900})
    admin_watch = browser_watch(admin_context)
    page = admin_context.new_page()
    page.set_default_timeout(60_000)
    login(page, web_server, "root", PASSWORD)
    page.goto(f"{web_server}/labeling/sets/new/")
    page.fill("input[name=name]", "Fruit and sea")
    page.fill("textarea[name=prompts_text]", "\n".join(PROMPTS))
    page.check(f"input[name=versions][value='{assistant.versions.get().pk}']")
    page.fill("input[name=candidates_per_task]", "3")
    page.fill("input[name=rankings_per_task]", "2")
    page.fill("input[name=temperature]", "1.0")
    page.click("#task-set-form button[type=submit]")
    expect(page.locator("[data-progress]")).to_have_attribute("data-status", "ready", timeout=180_000)
    page.screenshot(path=artifacts_dir / "1-candidates-generated.png", full_page=True)
    task_set = TaskSet.objects.get(name="Fruit and sea")
    assert task_set.progress_done == 2 and all(t.candidates.count() == 3 for t in task_set.tasks.all())

    # 2. A labeler ranks the first task by dragging.
    labeler_context = browser.new_context(viewport={"width": 1280, "height": 900})
    labeler_watch = browser_watch(labeler_context)
    labeler = labeler_context.new_page()
    labeler.set_default_timeout(60_000)
    login(labeler, web_server, "ann", PASSWORD)
    labeler.goto(f"{web_server}/labeling/")
    labeler.click(f"[data-start='{task_set.pk}']")
    labeler.wait_for_url("**/labeling/tasks/**")
    expect(labeler.locator("[data-guideline-version]")).to_have_text("v1")
    presented = _order(labeler)
    items = labeler.locator(".rank-item")
    last = items.nth(2).bounding_box()
    items.nth(0).locator(".rank-name").drag_to(items.nth(2), target_position={"x": 40, "y": last["height"] - 8})
    dragged = _order(labeler)
    assert dragged == presented[1:] + presented[:1]
    labeler.screenshot(path=artifacts_dir / "2-ranked-by-drag.png", full_page=True)
    labeler.click("[data-submit]")
    labeler.wait_for_url(lambda url: "/labeling/tasks/" in url and url != f"{web_server}{labeler.url}")

    # 3. ... and the second by keyboard: Alt+Down moves the focused candidate, Ctrl+Enter submits.
    expect(labeler.locator(".rank-item")).to_have_count(3)
    second_presented = _order(labeler)
    first, second, third = second_presented
    labeler.locator(".rank-item").first.focus()
    labeler.keyboard.press("ArrowDown")  # focus the second candidate
    labeler.keyboard.press("Alt+ArrowUp")  # and move it to the top
    assert _order(labeler) == [second, first, third]
    labeler.keyboard.press("ArrowDown")  # focus the candidate now second
    labeler.keyboard.press("Alt+ArrowDown")  # and move it to the bottom
    by_keyboard = _order(labeler)
    assert by_keyboard == [second, third, first]
    expect(labeler.locator("[data-ranker-status]")).to_contain_text("is now number 3")
    labeler.screenshot(path=artifacts_dir / "3-ranked-by-keyboard.png", full_page=True)
    labeler.keyboard.press("Control+Enter")
    labeler.wait_for_url(f"{web_server}/labeling/")  # nothing left for ann: back to the task sets
    rankings = {r.task.prompt: r for r in Ranking.objects.filter(labeler=ann).select_related("task")}
    assert sorted(r.order for r in rankings.values()) == sorted([dragged, by_keyboard])
    assert all(r.presented_order in (presented, second_presented) for r in rankings.values())

    # 4. A second labeler ranks both tasks the same way (through the service), so agreement is measurable.
    for _ in rankings:
        claim = task_claim_next(task_set=task_set, labeler=ben)
        own = next(r for r in rankings.values() if r.task_id == claim.task_id)
        ranking_submit(task=claim.task, labeler=ben, order=own.order, confirm_presented=True)

    # 5. The admin sees agreement with charts and downloads the DPO file.
    page.goto(f"{web_server}/labeling/sets/{task_set.pk}/")
    expect(page.locator("[data-alpha]")).to_have_text("1.000")
    expect(page.locator("[data-labeler=ann] [data-tau]")).to_have_text("1.000")
    assert page.evaluate("() => ['chart-tau', 'chart-kappa'].every(id => !!window.Chart.getChart(id))")
    page.screenshot(path=artifacts_dir / "4-agreement.png", full_page=True)
    with page.expect_download() as download_info:
        page.click("[data-export=trl-all]")
    path = download_info.value.path()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == export_rows(task_set=task_set, export_format="trl")
    texts = [[c.text.strip() for c in t.candidates.all()] for t in task_set.tasks.all()]
    if all(len(set(answers)) == 3 and all(answers) for answers in texts):  # equal or empty answers give no pair
        assert len(rows) == 6  # 2 prompts × C(3, 2)
    assert rows
    assert {row["prompt"][0]["content"] for row in rows} == set(PROMPTS)
    assert all(set(row) == {"prompt", "chosen", "rejected"} for row in rows)

    # 6. The fine-tune importer accepts that file, through its ordinary upload page.
    page.goto(f"{web_server}/finetune/datasets/upload/")
    page.fill("input[name=name]", "Fruit and sea rankings")
    page.select_option("select[name=kind]", "preference")
    page.set_input_files("input[name=file]", str(path))
    page.click("form button:has-text('Check and import')")
    page.wait_for_url("**/finetune/versions/**")
    version = DatasetVersion.objects.get(dataset__owner=admin, dataset__name="Fruit and sea rankings")
    expect(page.locator("[data-field=examples]")).to_have_text(str(len(rows)))
    assert [e.record for e in version.examples.order_by("index")] == rows
    page.screenshot(path=artifacts_dir / "5-imported-for-fine-tuning.png", full_page=True)
    for watch in (admin_watch, labeler_watch):  # under the strict CSP: nothing blocked, nothing thrown
        assert watch.violations == [] and watch.page_errors == [] and watch.console_errors == []
        assert watch.documents_without_csp() == [] and watch.foreign_requests() == []
    admin_context.close()
    labeler_context.close()
