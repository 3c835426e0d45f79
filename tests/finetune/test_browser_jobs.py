"""A fine-tune job in a real browser, under the site's Content-Security-Policy: open a dataset version's Train
form, set the advanced settings, start the job, watch the loss chart get its points without a reload
(static/js/finetune.js polls the JSON endpoint) and see the job succeed with its adapter loaded."""

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from apps.finetune.models import FineTuneJob
from apps.registry.catalog import SMOLLM2_FP32
from apps.registry.models import BaseModel
from tests.browser import browser_watch, login
from tests.factories import PASSWORD, make_user
from tests.finetune.factories import make_dataset_version

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
DATA = Path(__file__).parent / "data" / "assistant_name.jsonl"


def test_start_a_job_from_the_train_form_and_watch_it_train(web_server, browser, artifacts_dir, models_ready):
    owner = make_user("grace")
    hf_dir = Path(BaseModel.objects.get(name=SMOLLM2_FP32.name, variant=SMOLLM2_FP32.variant).path) / "hf"
    records = [json.loads(line) for line in DATA.read_text().splitlines()[:8]]  # 8: two steps an epoch
    version = make_dataset_version(owner, records=records, hf_dir=hf_dir, name="name")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = browser_watch(context)
    page = context.new_page()
    page.set_default_timeout(60_000)
    login(page, web_server, "grace", PASSWORD)

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
    assert watch.documents and watch.documents_without_csp() == []
    assert watch.violations == [] and watch.dialogs == [] and watch.page_errors == []
