"""Task sets for the labeling tests: made through the services, with candidates written in place of the
engine's (generation itself is checked against the real model in the browser test)."""

import pytest

from apps.accounts.models import Role
from apps.labeling.models import Candidate
from apps.labeling.services import PromptInput, task_set_create
from tests.factories import make_assistant, make_user


@pytest.fixture
def admin():
    return make_user("root", role=Role.ADMIN)


@pytest.fixture
def labelers():
    return [make_user(name, role=Role.LABELER) for name in ("ann", "ben", "cat")]


@pytest.fixture
def version(admin, stub_chat_model):
    return make_assistant(admin, base_model=stub_chat_model).versions.get()


@pytest.fixture
def make_set(admin, version):
    """make_set(prompts, k=3, r=3, authors=None) -> a task set whose tasks have k candidates each."""

    def build(prompts: list[str], *, k: int = 3, r: int = 3, authors: list | None = None, **kwargs):
        inputs = [
            PromptInput(text, "typed", (authors[i].pk if authors and authors[i] else None))
            for i, text in enumerate(prompts)
        ]
        task_set = task_set_create(
            name="Set",
            created_by=admin,
            prompts=inputs,
            versions=[version],
            candidates_per_task=k,
            rankings_per_task=r,
            guideline_text="Be **helpful**.",
            seed=7,
            **kwargs,
        )
        for task in task_set.tasks.all():
            Candidate.objects.bulk_create(
                Candidate(task=task, index=i, text=f"{task.prompt} / answer {i}", version=version, seed=1, stream=i)
                for i in range(k)
            )
        task_set.status = task_set.Status.READY
        task_set.save()
        return task_set

    return build
