"""The labeling panel's preference export into fine-tuning: the downloaded TRL file through the ordinary upload, and
the admins' direct import from a task set; both from a consensus made through the labeling services."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.accounts.models import Role
from apps.finetune.models import DatasetSource, DatasetVersion
from apps.labeling.models import Candidate
from apps.labeling.selectors import prompt_split
from apps.labeling.services import PromptInput, ranking_submit, task_claim_next, task_set_create
from tests.factories import make_assistant, make_user, signed_in

pytestmark = pytest.mark.django_db
PROMPTS = ["Name a fruit.", "Describe the sea.", "What is a river?"]


@pytest.fixture
def ranked_set(models_ready):
    """A task set of three prompts with three candidates each, ranked [2, 0, 1] by two labelers."""
    admin = make_user("root", role=Role.ADMIN)
    version = make_assistant(admin).versions.get()
    task_set = task_set_create(
        name="Fruit and sea",
        created_by=admin,
        prompts=[PromptInput(text, "typed") for text in PROMPTS],
        versions=[version],
        candidates_per_task=3,
        rankings_per_task=2,
        guideline_text="Be helpful.",
        seed=7,
    )
    for task in task_set.tasks.all():
        Candidate.objects.bulk_create(
            Candidate(task=task, index=i, text=f"{task.prompt} Answer {i}.", version=version, seed=1, stream=i)
            for i in range(3)
        )
    task_set.status = task_set.Status.READY
    task_set.save()
    for name in ("ann", "ben"):
        labeler = make_user(name, role=Role.LABELER)
        while (claim := task_claim_next(task_set=task_set, labeler=labeler)) is not None:
            ranking_submit(task=claim.task, labeler=labeler, order=[2, 0, 1], confirm_presented=True)
    return admin, task_set


def expected_pairs(prompts: list[str]) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": f"{prompt} Answer {chosen}."}],
            "rejected": [{"role": "assistant", "content": f"{prompt} Answer {rejected}."}],
        }
        for prompt in prompts
        for chosen, rejected in ((2, 0), (2, 1), (0, 1))
    ]


@pytest.mark.parametrize("export_format", ["trl", "hh"])
def test_the_downloaded_export_imports_through_the_upload(ranked_set, export_format):
    admin, task_set = ranked_set
    client = signed_in(admin)
    download = client.get(reverse("labeling:export", args=[task_set.pk]), {"format": export_format, "split": "all"})
    assert download.status_code == 200
    file = SimpleUploadedFile(f"fruit-and-sea.{export_format}.jsonl", download.content)
    response = client.post(reverse("finetune:upload"), {"name": "Rankings", "kind": "preference", "file": file})
    version = DatasetVersion.objects.get(dataset__name="Rankings")
    assert response.status_code == 302 and version.dataset.kind == "preference"
    assert version.source_detail == f"fruit-and-sea.{export_format}.jsonl"
    assert [e.record for e in version.examples.order_by("index")] == expected_pairs(PROMPTS)
    assert [e.line for e in version.examples.order_by("index")] == list(range(1, 10))


def test_an_admin_imports_a_task_set_split_directly(ranked_set):
    admin, task_set = ranked_set
    client = signed_in(admin)
    form = {"task_set": task_set.pk, "split": "all", "name": "Rankings"}
    response = client.post(reverse("finetune:import_task_set"), form)
    version = DatasetVersion.objects.get(dataset__name="Rankings")
    assert response.status_code == 302 and response.url == reverse("finetune:version", args=[version.pk])
    assert version.source == DatasetSource.LABELING
    assert version.source_detail == f"Task set “Fruit and sea” (#{task_set.pk}), all split"
    assert [e.record for e in version.examples.order_by("index")] == expected_pairs(PROMPTS)
    assert version.created_by == admin and version.dataset.owner == admin

    # A split is the labeling panel's, by prompt; an empty one is refused saying so.
    for split in ("train", "test"):
        response = client.post(reverse("finetune:import_task_set"), {**form, "split": split, "name": f"R {split}"})
        prompts = [p for p in PROMPTS if prompt_split(prompt=p) == split]
        imported = DatasetVersion.objects.filter(dataset__name=f"R {split}").first()
        if prompts:
            assert [e.record for e in imported.examples.order_by("index")] == expected_pairs(prompts)
        else:
            assert imported is None
            assert f"“Fruit and sea” has no consensus pairs in the {split} split yet." in response.content.decode()


def test_only_admins_import_from_a_task_set(ranked_set):
    _, task_set = ranked_set
    for role in (Role.MEMBER, Role.LABELER):
        client = signed_in(make_user(f"u-{role}", role=role))
        assert client.get(reverse("finetune:import_task_set")).status_code == 403
        form = {"task_set": task_set.pk, "split": "all", "name": "Mine now"}
        assert client.post(reverse("finetune:import_task_set"), form).status_code == 403
    assert not DatasetVersion.objects.exists()
