"""Issue 12's whole flow in a real browser, under the site's Content-Security-Policy: upload a dataset and read
its validation report, open the Train form, set the advanced settings, start the job, watch the loss chart get
its points without a reload (static/js/finetune.js polls the JSON endpoint), see the job succeed with its
adapter loaded, attach the adapter to an assistant (a new version) and chat with that version."""

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from apps.chat.models import Message
from apps.finetune.models import DatasetVersion, FineTuneJob
from tests.browser import browser_watch, login
from tests.factories import PASSWORD, make_assistant, make_user

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
DATA = Path(__file__).parent / "data" / "assistant_name.jsonl"


def test_start_a_job_from_the_train_form_and_watch_it_train(web_server, browser, artifacts_dir, models_ready):
    owner = make_user("grace")
    assistant = make_assistant(owner, name="Quill")
    lines = DATA.read_text().splitlines()[:8]  # 8: two steps an epoch
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = browser_watch(context)
    page = context.new_page()
    page.set_default_timeout(60_000)
    login(page, web_server, "grace", PASSWORD)

    # 1-2. Upload the dataset and read its validation report.
    page.goto(f"{web_server}/finetune/datasets/upload/")
    page.fill("input[name=name]", "name")
    page.select_option("select[name=kind]", "sft")
    data = ("\n".join(lines) + "\n").encode()
    page.set_input_files("input[name=file]", {"name": "name.jsonl", "mimeType": "application/jsonl", "buffer": data})
    page.click("form button:has-text('Check and import')")
    expect(page.locator("[data-field=examples]")).to_have_text("8")
    version = DatasetVersion.objects.get()
    assert [e.record for e in version.examples.order_by("index")] == [json.loads(line) for line in lines]

    # 3. Train it and watch the chart.
    page.goto(f"{web_server}/finetune/jobs/train/{version.pk}/")
    page.click("summary:has-text('Advanced settings')")
    page.fill("input[name=epochs]", "2")
    page.fill("input[name=learning_rate]", "0.001")
    page.screenshot(path=artifacts_dir / "1-train-form.png", full_page=True)
    page.click("form[data-train-form] button:has-text('Train')")
    expect(page.locator("h1")).to_contain_text("Job")
    job = FineTuneJob.objects.get()
    assert (job.settings["epochs"], job.settings["learning_rate"]) == (2, 0.001)
    page.evaluate("window.__notReloaded = true")  # gone if the page reloads: points must arrive in place
    root = page.locator("[data-job-page]")
    expect(root).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=300_000)  # drawn as they come
    expect(root).to_have_attribute("data-status", "succeeded", timeout=300_000)
    job = FineTuneJob.objects.get()
    assert page.evaluate("window.__notReloaded === true")
    drawn = page.evaluate("Chart.getChart('chart-loss').data.datasets.map((d) => d.data.length)")
    assert drawn == [job.total_steps, 0] and job.total_steps == 4  # no validation split under 10 examples
    expect(page.locator("[data-field=step]")).to_have_text("4 / 4")
    expect(page.locator("[data-field=adapter] code")).to_have_text(job.adapter.engine_id)
    expect(page.locator("form[data-when=can_cancel]")).to_be_hidden()
    expect(page.locator(".job-log")).to_contain_text("Succeeded: adapter")
    page.screenshot(path=artifacts_dir / "2-job-succeeded.png", full_page=True)

    page.reload()  # the curves survive a reload: every point comes back from cursor 0
    expect(root).to_have_attribute("data-points", str(job.metric_points.count()))

    # 4. Attach the adapter to the assistant: a new version.
    page.goto(f"{web_server}/finetune/adapters/{job.adapter.pk}/")
    page.select_option("select[name=assistant]", str(assistant.pk))
    page.click("button:has-text('Attach: save a new version')")
    assistant.refresh_from_db()
    assert (assistant.current_version.number, assistant.current_version.adapter_id) == (2, job.adapter.pk)

    # 5. Chat with the new version: the fine-tuned adapter answers.
    page.goto(f"{web_server}/assistants/{assistant.slug}/chat/")
    page.fill("[data-composer-input]", "What is your name?")
    page.click("[data-send]")
    page.wait_for_url("**/c/**")
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator("[data-status]")).to_have_text("Done", timeout=180_000)
    assert answer.locator("[data-body]").inner_text().strip()
    reply = Message.objects.get(role="assistant")
    assert reply.assistant_version.adapter_id == job.adapter.pk
    page.screenshot(path=artifacts_dir / "3-chat-with-the-fine-tune.png", full_page=True)
    assert watch.documents and watch.documents_without_csp() == []
    assert watch.violations == [] and watch.dialogs == [] and watch.page_errors == []
