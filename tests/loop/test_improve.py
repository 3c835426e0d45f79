"""One confirmation, in process on the tiny chat model: the dataset version and the DPO job, the job's success
making the draft through the fine-tune runner's hook, and a second round starting from the published draft's
adapter. And what the confirmation refuses before anything is stored."""

import pytest
from django.urls import reverse

from apps.assistants.services import assistant_config_of, assistant_update, assistant_version_publish
from apps.finetune.models import DatasetSource, DatasetVersion, FineTuneJob, JobStatus, Method
from apps.finetune.services import finetune_job_run
from apps.loop.models import LoopRun
from apps.loop.selectors import ARENA, LABELING, PairFilters, loop_gather, loop_training_settings
from apps.loop.services import LoopError, loop_improve_start
from tests.factories import make_assistant, make_user, signed_in
from tests.finetune.factories import make_base_model
from tests.html_tree import html_parse
from tests.loop.conftest import shortest_first, three_answers

pytestmark = pytest.mark.django_db
PROMPTS = ["Name a fruit.", "Describe the sea.", "Name a colour."]


@pytest.fixture
def tiny_assistant(tiny_chat, settings, tmp_path, owner):
    """'Helper' v1 and v2 (current) on the tiny chat model, which trains in seconds; no engine to load into."""
    settings.FINETUNE_DIR, settings.FINETUNE_ADAPTERS_DIR = tmp_path / "finetune", tmp_path / "adapters"
    settings.FINETUNE_CANCEL_CHECK_SECONDS = 0
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # the hot load is logged, not fatal
    base = make_base_model(tiny_chat["root"])
    assistant = make_assistant(owner, base_model=base, instructions="Answer briefly.")
    config = assistant_config_of(version=assistant.current_version)
    assistant_update(assistant=assistant, actor=owner, config=config, visibility=assistant.visibility)
    assistant.refresh_from_db()
    return assistant


@pytest.fixture
def preferences(tiny_assistant, ranked_set, arena_vote):
    """9 labeling pairs and 1 arena pair between the assistant's versions."""
    v1, v2 = tiny_assistant.versions.order_by("number")
    ranked_set(PROMPTS, versions=[v1, v2], answers=three_answers, order=shortest_first)
    arena_vote("Hi?", "Hello.", "Hello there, how are you today?", versions=(v2, v1))
    return tiny_assistant


def test_the_confirmation_builds_the_dataset_queues_dpo_and_the_jobs_success_makes_the_draft(preferences, owner):
    assistant = preferences
    v2 = assistant.current_version
    gathered = loop_gather(assistant=assistant, filters=PairFilters())
    run = loop_improve_start(assistant=assistant, actor=owner, filters=PairFilters())

    version = run.dataset_version
    assert (version.source, version.example_count, version.dataset.kind) == (DatasetSource.LOOP, 10, "preference")
    assert [e.record for e in version.examples.order_by("index")] == gathered.records
    assert [p["source"] for p in run.provenance] == [LABELING] * 9 + [ARENA]
    assert run.pair_counts == {LABELING: 9, ARENA: 1} and run.parent == v2
    job = run.job
    expected = loop_training_settings(pairs=10)
    assert (job.method, job.assistant, job.start_adapter, job.status) == (Method.DPO, assistant, None, JobStatus.QUEUED)
    assert (job.settings["epochs"], job.settings["learning_rate"]) == (expected.epochs, expected.learning_rate)
    with pytest.raises(LoopError, match="still improving"):
        loop_improve_start(assistant=assistant, actor=owner, filters=PairFilters())
    job_page = html_parse(signed_in(owner).get(reverse("finetune:job", args=[job.pk])).content.decode())
    assert reverse("loop:history", args=[assistant.slug]) in {a.attrs.get("href") for a in job_page.find_all("a")}

    finetune_job_run(job_id=job.pk)  # the worker's task body, in process

    job.refresh_from_db()
    run.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.message
    draft = run.draft
    assert draft.is_draft and draft.parent == v2 and draft.adapter == job.adapter
    assert draft.instructions == v2.instructions
    assistant.refresh_from_db()
    assert assistant.current_version == v2
    assert any(f"Draft version {draft.number}" in line for line in job.log_lines.values_list("message", flat=True))

    # Published, the draft is what the next round improves: its adapter is the new job's start and reference.
    assistant_version_publish(version=draft, actor=owner)
    assistant.refresh_from_db()
    second = loop_improve_start(assistant=assistant, actor=owner, filters=PairFilters())
    assert second.parent == draft and second.job.start_adapter == draft.adapter
    assert second.dataset_version.dataset == version.dataset and second.dataset_version.number == 2


def test_too_few_pairs_a_stranger_or_a_high_severity_finding_build_nothing(tiny_assistant, owner, ranked_set):
    v1, v2 = tiny_assistant.versions.order_by("number")
    ranked_set(PROMPTS[:2], versions=[v1, v2], answers=three_answers, order=shortest_first, name="Few")
    with pytest.raises(LoopError, match="at least 8"):
        loop_improve_start(assistant=tiny_assistant, actor=owner, filters=PairFilters())
    with pytest.raises(LoopError, match="owner"):
        loop_improve_start(assistant=tiny_assistant, actor=make_user("mallory"), filters=PairFilters())

    def with_remote_images(prompt):
        return [f"Long answer to {prompt}, rambling.", f"![x](https://evil.example/{len(prompt)}.png)", "Middling."]

    ranked_set(PROMPTS, versions=[v1, v2], answers=with_remote_images, order=shortest_first, name="Images")
    assert loop_gather(assistant=tiny_assistant, filters=PairFilters()).high_findings
    with pytest.raises(LoopError, match="high-severity"):
        loop_improve_start(assistant=tiny_assistant, actor=owner, filters=PairFilters())
    assert not DatasetVersion.objects.exists() and not FineTuneJob.objects.exists() and not LoopRun.objects.exists()
