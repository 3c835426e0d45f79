"""The fine-tune job pages: the owner's flows (the Train form with its advanced section, the list, the live
page and its JSON endpoint, cancel, retry), and everyone else gets 404 on every one of them."""

import pytest
from django.urls import reverse
from lxml import html

from apps.finetune.models import FineTuneJob, JobLogLine, JobStatus, MetricPoint
from apps.finetune.services import finetune_job_create
from tests.core.test_security_headers import csp_check
from tests.factories import make_assistant, make_user, signed_in
from tests.finetune.conftest import conversation
from tests.finetune.factories import make_base_model, make_dataset_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_job(tiny_chat, settings, tmp_path):
    settings.FINETUNE_DIR, settings.FINETUNE_ADAPTERS_DIR = tmp_path / "finetune", tmp_path / "adapters"
    alice = make_user("alice")
    base = make_base_model(tiny_chat["root"])
    make_assistant(alice, base_model=base)  # so the served chat model is the tiny one here
    version = make_dataset_version(alice, records=[conversation(i) for i in range(12)], hf_dir=tiny_chat["hf_dir"])
    job = finetune_job_create(owner=alice, dataset_version=version, method="sft")
    return alice, job


def test_every_job_view_is_404_for_another_user(alice_job):
    alice, job = alice_job
    mallory = signed_in(make_user("mallory"))
    gets = [
        reverse("finetune:job", args=[job.pk]),
        reverse("finetune:job_progress", args=[job.pk]),
        reverse("finetune:job_create", args=[job.dataset_version_id]),
    ]
    posts = [
        reverse("finetune:job_cancel", args=[job.pk]),
        reverse("finetune:job_retry", args=[job.pk]),
        reverse("finetune:job_create", args=[job.dataset_version_id]),
    ]
    assert [mallory.get(url).status_code for url in gets] == [404, 404, 404]
    assert [mallory.post(url, {"epochs": 1}).status_code for url in posts] == [404, 404, 404]
    job.refresh_from_db()
    assert (job.status, job.cancel_requested, FineTuneJob.objects.count()) == (JobStatus.QUEUED, False, 1)
    listing = html.fromstring(mallory.get(reverse("finetune:jobs")).content)
    assert listing.xpath("//tr[@data-job]") == []
    # signed out: the login page, never the job
    anonymous = signed_in(alice)
    anonymous.logout()
    assert anonymous.get(gets[0]).status_code == 302 and anonymous.post(posts[0]).status_code == 302


def test_the_train_form_starts_a_job_with_the_advanced_settings(alice_job):
    alice, job = alice_job
    client = signed_in(alice)
    url = reverse("finetune:job_create", args=[job.dataset_version_id])
    page = client.get(url)
    assert page.status_code == 200
    csp_check(page["Content-Security-Policy"])
    form = html.fromstring(page.content).xpath("//form[@data-train-form]")[0]
    assert form.get("action") == url
    names = {field.get("name") for field in form.xpath(".//details//input")}
    assert {"rank", "alpha", "dropout", "target_modules", "learning_rate", "epochs", "batch_size"} <= names
    assert {"max_length", "seed"} <= names
    assert form.xpath(".//input[@name='epochs']")[0].get("placeholder") == "3"  # 12 examples: one more epoch
    response = client.post(
        url, {"rank": 4, "alpha": 8, "learning_rate": 0.01, "epochs": 2, "target_modules": ["q_proj", "v_proj"]}
    )
    new = FineTuneJob.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302 and response["Location"] == reverse("finetune:job", args=[new.pk])
    assert new.settings["lora"]["rank"] == 4 and new.settings["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert (new.settings["epochs"], new.settings["learning_rate"], new.method) == (2, 0.01, "sft")
    bad = client.post(url, {"rank": 0})
    assert bad.status_code == 200 and FineTuneJob.objects.count() == 2  # the form says why; nothing queued


def test_the_job_page_and_its_endpoint_show_every_point_and_the_log(alice_job):
    alice, job = alice_job
    for step in (1, 2, 3):
        MetricPoint.objects.create(job=job, kind="train", step=step, values={"loss": 3.0 - step / 2, "epoch": step})
    MetricPoint.objects.create(job=job, kind="validation", step=3, values={"loss": 2.0, "epoch": 3})
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, step=3, total_steps=8, attempts=1)
    client = signed_in(alice)
    page = client.get(reverse("finetune:job", args=[job.pk]))
    tree = html.fromstring(page.content)
    root = tree.xpath("//*[@data-job-page]")[0]
    assert root.get("data-job-page") == reverse("finetune:job_progress", args=[job.pk])
    assert tree.xpath("//canvas/@id") == ["chart-loss"]  # SFT: no reward chart
    assert [f.get("action") for f in tree.xpath("//form[@data-when]")] == [
        reverse("finetune:job_cancel", args=[job.pk]),
        reverse("finetune:job_retry", args=[job.pk]),
    ]
    cancel, retry = tree.xpath("//form[@data-when]")
    assert cancel.get("hidden") is None and retry.get("hidden") is not None  # running: cancel, not retry
    assert not tree.xpath("//script[not(@src)]")  # CSP-clean: no inline script
    url = reverse("finetune:job_progress", args=[job.pk])
    writes = (MetricPoint.objects.count(), JobLogLine.objects.count())
    data = client.get(url).json()
    expected = [("train", 1), ("train", 2), ("train", 3), ("validation", 3)]
    assert [(p["kind"], p["step"]) for p in data["points"]] == expected
    assert data["job"]["train_loss"] == 1.5 and data["job"]["validation_loss"] == 2.0 and data["job"]["step"] == 3
    assert data["log"][0]["message"].startswith("Queued")
    again = client.get(url, {"after": data["after"], "log_after": data["log_after"]}).json()
    assert again["points"] == [] and again["log"] == []
    assert client.get(url, {"after": "junk"}).json()["points"] == data["points"]
    assert (MetricPoint.objects.count(), JobLogLine.objects.count()) == writes  # GET writes nothing


def test_cancel_and_retry_from_the_page(alice_job):
    alice, job = alice_job
    client = signed_in(alice)
    assert client.post(reverse("finetune:job_cancel", args=[job.pk])).status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert client.post(reverse("finetune:job_retry", args=[job.pk])).status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    response = client.post(reverse("finetune:job_retry", args=[job.pk]), follow=True)
    assert [str(m) for m in response.context["messages"]][-1] == "Only a failed or cancelled job can be retried."
    assert client.get(reverse("finetune:job_cancel", args=[job.pk])).status_code == 405


def test_the_job_list_shows_only_the_owners_jobs(alice_job):
    alice, job = alice_job
    tree = html.fromstring(signed_in(alice).get(reverse("finetune:jobs")).content)
    assert tree.xpath("//tr[@data-job]/@data-job") == [str(job.pk)]
    assert tree.xpath("//tr[@data-job]//a/@href") == [reverse("finetune:job", args=[job.pk])]
    datasets = html.fromstring(signed_in(alice).get(reverse("finetune:datasets")).content)
    assert reverse("finetune:jobs") in datasets.xpath("//*[@class='page-actions']/a/@href")  # reachable


def test_the_version_page_carries_the_owners_train_form(alice_job):
    alice, job = alice_job
    url = reverse("finetune:version", args=[job.dataset_version_id])
    tree = html.fromstring(signed_in(alice).get(url).content)
    [form] = tree.xpath("//form[@data-train-form]")
    assert form.get("action") == reverse("finetune:job_create", args=[job.dataset_version_id])
    assert form.xpath(".//input[@name='csrfmiddlewaretoken']/@value")[0]
    assert form.xpath(".//details//input[@name='rank']/@placeholder") == [str(job.settings["lora"]["rank"])]
