"""The claim queue: two labelers at once, timeouts, fairness, never twice, never one's own prompt, gold tasks."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.labeling.models import Claim, Ranking
from apps.labeling.services import (
    LabelingError,
    PresentedOrderUnchanged,
    guideline_publish,
    ranking_submit,
    task_claim_next,
    task_gold_set,
)


def _claim_at_once(task_set, labelers) -> list:
    """Each labeler claims from its own thread and database connection, all released at the same moment."""
    barrier = threading.Barrier(len(labelers))
    results: list = [None] * len(labelers)

    def claim(i: int) -> None:
        try:
            barrier.wait()
            results[i] = task_claim_next(task_set=task_set, labeler=labelers[i])
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(labelers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_two_labelers_at_once_never_share_the_last_slot(make_set, labelers):
    for _ in range(5):  # repeated: the race differs run to run, the outcome must not
        task_set = make_set(["Only prompt"], r=1)
        first, second = _claim_at_once(task_set, labelers[:2])
        claims = [c for c in (first, second) if c is not None]
        assert len(claims) == 1
        assert Claim.objects.filter(task__task_set=task_set).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_labelers_at_once_get_different_tasks_when_r_is_one(make_set, labelers):
    task_set = make_set(["First", "Second"], r=1)
    first, second = _claim_at_once(task_set, labelers[:2])
    assert first is not None and second is not None
    assert first.task_id != second.task_id


@pytest.mark.django_db(transaction=True)
def test_two_labelers_at_once_share_a_task_that_needs_two_rankings(make_set, labelers):
    task_set = make_set(["Only prompt"], r=2)
    first, second = _claim_at_once(task_set, labelers[:2])
    assert first is not None and second is not None and first.task_id == second.task_id
    assert task_claim_next(task_set=task_set, labeler=labelers[2]) is None  # R=2 slots are live


@pytest.mark.django_db
def test_an_expired_claim_frees_its_slot_and_its_late_ranking_is_refused(make_set, labelers):
    ann, ben, _ = labelers
    task_set = make_set(["Only prompt"], r=1)
    now = timezone.now()
    claim = task_claim_next(task_set=task_set, labeler=ann, now=now)
    assert task_claim_next(task_set=task_set, labeler=ben, now=now + timedelta(minutes=5)) is None
    later = now + timedelta(minutes=task_set.claim_minutes + 1)
    taken = task_claim_next(task_set=task_set, labeler=ben, now=later)
    assert taken is not None and taken.task_id == claim.task_id
    order = list(reversed(taken.presented_order))
    ranking_submit(task=taken.task, labeler=ben, order=order, now=later)
    with pytest.raises(LabelingError, match="expired"):
        ranking_submit(task=claim.task, labeler=ann, order=list(reversed(claim.presented_order)), now=later)


@pytest.mark.django_db
def test_a_labeler_keeps_their_live_claim_and_never_ranks_a_task_twice(make_set, labelers):
    ann = labelers[0]
    task_set = make_set(["First", "Second"], r=3)
    claim = task_claim_next(task_set=task_set, labeler=ann)
    assert task_claim_next(task_set=task_set, labeler=ann).pk == claim.pk  # resumed, not a second claim
    ranking_submit(task=claim.task, labeler=ann, order=list(reversed(claim.presented_order)))
    with pytest.raises(LabelingError, match="already"):
        ranking_submit(task=claim.task, labeler=ann, order=list(reversed(claim.presented_order)))
    following = task_claim_next(task_set=task_set, labeler=ann)
    assert following.task_id != claim.task_id
    ranking_submit(task=following.task, labeler=ann, order=list(reversed(following.presented_order)))
    assert task_claim_next(task_set=task_set, labeler=ann) is None
    assert Ranking.objects.filter(labeler=ann).count() == 2


@pytest.mark.django_db
def test_a_labeler_is_never_given_a_prompt_they_wrote(make_set, labelers):
    ann, ben, _ = labelers
    task_set = make_set(["Ann's own question"], authors=[ann])
    assert task_claim_next(task_set=task_set, labeler=ann) is None
    assert task_claim_next(task_set=task_set, labeler=ben) is not None


@pytest.mark.django_db
def test_the_queue_serves_the_least_ranked_task_first(make_set, labelers):
    ann, ben, _ = labelers
    task_set = make_set(["First", "Second", "Third"], r=2)
    first = task_claim_next(task_set=task_set, labeler=ann)
    ranking_submit(task=first.task, labeler=ann, order=list(reversed(first.presented_order)))
    second = task_claim_next(task_set=task_set, labeler=ben)
    assert second.task_id != first.task_id  # the ranked task waits until the unranked ones have a ranking


@pytest.mark.django_db
def test_a_gold_task_reaches_every_labeler_beyond_r(make_set, labelers):
    task_set = make_set(["Gold prompt"], r=1)
    task = task_set.tasks.get()
    task_gold_set(task=task, order=[2, 0, 1])
    for labeler in labelers:
        claim = task_claim_next(task_set=task_set, labeler=labeler)
        assert claim is not None and claim.task_id == task.pk
        ranking_submit(task=task, labeler=labeler, order=[2, 0, 1], confirm_presented=True)
    assert task.rankings.count() == 3


@pytest.mark.django_db
def test_a_ranking_records_the_presented_order_guideline_version_and_time(make_set, labelers, admin):
    ann = labelers[0]
    task_set = make_set(["Prompt"], k=4)
    now = timezone.now()
    claim = task_claim_next(task_set=task_set, labeler=ann, now=now)
    assert sorted(claim.presented_order) == [0, 1, 2, 3]
    guideline_publish(task_set=task_set, text="Version two.", created_by=admin)
    later = now + timedelta(seconds=42)
    with pytest.raises(PresentedOrderUnchanged):
        ranking_submit(task=claim.task, labeler=ann, order=claim.presented_order, now=later)
    shown = claim.presented_order
    ranking = ranking_submit(task=claim.task, labeler=ann, order=shown, confirm_presented=True, now=later)
    assert ranking.presented_order == claim.presented_order
    assert ranking.guideline.version == 2
    assert ranking.seconds_spent == 42


@pytest.mark.django_db
def test_not_rankable_needs_a_reason_and_a_ranking_needs_every_candidate(make_set, labelers):
    ann = labelers[0]
    task_set = make_set(["Prompt"])
    claim = task_claim_next(task_set=task_set, labeler=ann)
    with pytest.raises(LabelingError, match="why"):
        ranking_submit(task=claim.task, labeler=ann, order=None, not_rankable_reason="  ")
    with pytest.raises(LabelingError, match="every candidate"):
        ranking_submit(task=claim.task, labeler=ann, order=[0, 1])
    ranking = ranking_submit(task=claim.task, labeler=ann, order=None, not_rankable_reason="All empty")
    assert ranking.order is None and ranking.not_rankable_reason == "All empty"


@pytest.mark.django_db
def test_ranking_without_a_claim_is_refused(make_set, labelers):
    task_set = make_set(["Prompt"])
    with pytest.raises(LabelingError, match="Claim"):
        ranking_submit(task=task_set.tasks.get(), labeler=labelers[0], order=[2, 1, 0])
