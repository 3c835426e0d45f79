"""An owner's assistant with two versions, and preferences between their answers made the way people make
them: labelers claiming and ranking tasks through the labeling services, the owner voting in My arena through
the arena services. Answers are written in place of the engine's (generation is the browser test's and the
slow test's)."""

import random

import pytest

from apps.accounts.models import Role
from apps.arena.models import Battle, BattleAnswer, Mode
from apps.arena.services import battle_start, battle_turn_add, battle_vote
from apps.assistants.services import AssistantConfig, assistant_update
from apps.finetune.models import Adapter, AdapterSource, Dataset, DatasetSource, DatasetVersion, FineTuneJob
from apps.labeling.models import Candidate
from apps.labeling.services import PromptInput, ranking_submit, task_claim_next, task_set_create
from apps.loop.models import LoopRun
from tests.factories import make_assistant, make_user
from tests.finetune.conftest import tiny_chat  # noqa: F401 (the tiny chat model, a fixture for test_improve)

SHORT, LONG, MIDDLE = "Short.", "A much longer answer that rambles on.", "A middling answer."


def three_answers(prompt: str) -> list[str]:
    """Candidates 0–2 of a task: long, short, middling (each naming its prompt, so no two tasks share one)."""
    return [f"{LONG} ({prompt})", f"{SHORT} ({prompt})", f"{MIDDLE} ({prompt})"]


def shortest_first(prompt: str) -> list[int]:
    return [1, 2, 0]


@pytest.fixture
def owner():
    return make_user("olive")


@pytest.fixture
def assistant(owner, stub_chat_model):
    """'Helper' with v1 and v2 (v2 current)."""
    assistant = make_assistant(owner, base_model=stub_chat_model, instructions="Answer briefly.")
    assistant_update(
        assistant=assistant,
        actor=owner,
        config=AssistantConfig(name="Helper", base_model=stub_chat_model, instructions="Answer briefly."),
        visibility=assistant.visibility,
    )
    assistant.refresh_from_db()
    return assistant


@pytest.fixture
def labelers():
    return [make_user(name, role=Role.LABELER) for name in ("ann", "ben", "cat")]


@pytest.fixture
def ranked_set(owner, labelers):
    """ranked_set(prompts, versions=..., answers=..., order=...) -> a task set whose every task has the
    candidates `answers(prompt)` (texts; candidate i comes from versions[i % len(versions)]), ranked by every
    labeler as `order(prompt)` (candidate indices, best first), through the claim queue."""

    def build(prompts, *, versions, answers, order, name="Set"):
        admin = make_user(f"admin-{name.lower()}", role=Role.ADMIN)
        task_set = task_set_create(
            name=name,
            created_by=admin,
            prompts=[PromptInput(p, "typed", admin.pk) for p in prompts],
            versions=versions,
            candidates_per_task=len(answers(prompts[0])),
            rankings_per_task=len(labelers),
            guideline_text="Prefer short answers.",
            seed=1,
        )
        for task in task_set.tasks.all():
            Candidate.objects.bulk_create(
                Candidate(task=task, index=i, text=text, version=versions[i % len(versions)], seed=1, stream=i)
                for i, text in enumerate(answers(task.prompt))
            )
        task_set.status = task_set.Status.READY
        task_set.save()
        for labeler in labelers:
            while (claim := task_claim_next(task_set=task_set, labeler=labeler)) is not None:
                wanted = order(claim.task.prompt)
                ranking_submit(task=claim.task, labeler=labeler, order=wanted, confirm_presented=True)
        return task_set

    return build


def answer_battle(battle: Battle, text_a: str, text_b: str) -> None:
    """Both answers finished, as the engine would leave them."""
    for side, text in (("a", text_a), ("b", text_b)):
        BattleAnswer.objects.filter(turn__battle=battle, side=side, status__in=["pending", "streaming"]).update(
            status=BattleAnswer.Status.DONE, content=text
        )


@pytest.fixture
def arena_vote(owner):
    """arena_vote(prompt, better, worse, versions=(v_better, v_worse), decisive=True, turns=1) -> a voted, named
    My arena battle of the owner's: `better` (the first version's answer, side A) wins, or with decisive=False,
    it is a tie."""

    def vote(prompt, better, worse, *, versions, decisive=True, turns=1):
        good, bad = versions
        battle = battle_start(
            user=owner, mode=Mode.PERSONAL, prompt=prompt, version_a=good, version_b=bad, rng=random.Random(0)
        )
        answer_battle(battle, better, worse)
        for number in range(2, turns + 1):
            battle_turn_add(battle=battle, prompt=f"And then? ({number})")
            answer_battle(battle, better, worse)
        return battle_vote(battle=battle, user=owner, outcome="a" if decisive else "tie")

    return vote


def loop_job(assistant, owner):
    """A loop run and its job, as "Improve this assistant" leaves them, with the adapter the job made."""
    dataset = Dataset.objects.create(owner=owner, name=f"Improve {assistant.slug}", kind="preference")
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=1,
        source=DatasetSource.LOOP,
        created_by=owner,
        sha256="0" * 64,
        example_count=12,
        token_count=1200,
        seconds_per_epoch=40.0,
    )
    job = FineTuneJob.objects.create(
        owner=owner,
        assistant=assistant,
        dataset_version=version,
        method="dpo",
        base_model=assistant.current_version.base_model,
    )
    LoopRun.objects.create(
        assistant=assistant,
        parent=assistant.current_version,
        provenance=[{"source": "labeling"}] * 12,
        dataset_version=version,
        job=job,
        created_by=owner,
    )
    adapter = Adapter.objects.create(
        owner=owner,
        name=f"loop-{job.pk}",
        source=AdapterSource.TRAINED,
        base_model=job.base_model,
        base_model_hash="0" * 64,
        job=job,
        dataset_version=version,
        engine_id=f"loop-{job.pk}",
        path="/nonexistent",
        sha256="1" * 64,
    )
    return job, adapter
