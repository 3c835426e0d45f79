"""The whole loop with the real model, a real inference server and a real Celery worker, at a small scale
(bench/loop.py's driver with a few prompts and short answers): the stand-in labelers' rankings become pairs,
the pairs a dataset version and a DPO job, the job a draft with its parent, and the held-out comparison a win
rate with its interval. Improvement itself is the bench's to show (bench/results_loop.md): at this scale the
interval is too wide to assert it."""

import pytest

from apps.accounts.models import Role
from apps.arena.models import Mode
from apps.arena.sampler import pair_key
from apps.arena.selectors import arena_versions, draft_parent_pairs
from apps.assistants.services import AssistantConfig, assistant_create
from apps.finetune.models import DatasetSource, JobStatus, Method
from apps.loop.models import LoopRun
from bench.loop import LoopBenchConfig, loop_bench_run
from tests.factories import make_user


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_loop_end_to_end_with_the_real_model(models_ready, celery_worker_process, inference_server):
    from apps.assistants.selectors import chat_model_default

    owner = make_user("olive")
    admin = make_user("root", role=Role.ADMIN)
    labelers = [make_user(name, role=Role.LABELER) for name in ("ann", "ben")]
    config = LoopBenchConfig(
        train_prompts=5, candidates=3, held_out_prompts=4, held_out_samples=1, max_tokens=48, parallel_sets=2
    )
    assistant = assistant_create(
        owner=owner, config=AssistantConfig(name="Brief", base_model=chat_model_default(), max_tokens=config.max_tokens)
    )
    parent = assistant.current_version

    result = loop_bench_run(config=config, owner=owner, admin=admin, labelers=labelers, assistant=assistant)

    run = LoopRun.objects.get(assistant=assistant)
    assert result.pairs == run.dataset_version.example_count == len(run.provenance) >= 8
    assert run.dataset_version.source == DatasetSource.LOOP and run.pair_counts == {
        "labeling": result.pairs,
        "arena": 0,
    }
    assert (result.job.method, result.job.status, result.job.start_adapter) == (Method.DPO, JobStatus.SUCCEEDED, None)
    draft = result.draft
    assert draft == run.draft and draft.parent == parent and draft.is_draft and draft.adapter
    assistant.refresh_from_db()
    assert assistant.current_version == parent  # nothing changed for users
    mine = arena_versions(mode=Mode.PERSONAL, user=owner)
    assert pair_key(draft.pk, parent.pk) in draft_parent_pairs(versions=mine)
    assert len(result.wins) == config.held_out_prompts and all(0 <= w <= 1 for w in result.wins)
    low, high = result.interval
    assert 0 <= low <= result.win_rate <= high <= 1
