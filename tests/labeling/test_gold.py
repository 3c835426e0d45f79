"""Hidden gold tasks: the deterministic ~5% sample, its order from the admin or from a unanimous panel of three,
who is scored against it, exclusions re-judging a panel, and gold staying invisible to labelers."""

import pytest
from django.urls import reverse

from apps.accounts.models import Role
from apps.labeling.models import Task, TaskSet
from apps.labeling.selectors import quality_report
from apps.labeling.services import (
    candidates_generate,
    gold_sample_size,
    labeler_exclude,
    labeler_include,
    ranking_submit,
    task_claim_next,
    task_gold_set,
    task_set_gold_sample,
)
from tests.factories import make_user, signed_in

pytestmark = pytest.mark.django_db


def rank(task_set, labeler, order: list[int]) -> None:
    """The labeler claims their next task (the test's sets serve the gold one) and ranks it `order`."""
    claim = task_claim_next(task_set=task_set, labeler=labeler)
    assert claim is not None
    ranking_submit(task=claim.task, labeler=labeler, order=order, confirm_presented=True)


def gold_set(make_set, *, r: int = 1):
    """A one-task set whose task is sampled as gold, awaiting its order (as the sample leaves it)."""
    task_set = make_set(["Which answer is best?"], k=3, r=r)
    Task.objects.filter(task_set=task_set).update(gold_sampled=True)
    return task_set, task_set.tasks.get()


@pytest.mark.parametrize(("tasks", "gold"), [(1, 0), (9, 0), (10, 1), (29, 1), (30, 2), (100, 5), (2000, 100)])
def test_about_five_percent_and_at_least_one_from_ten_tasks(tasks, gold):
    assert gold_sample_size(task_count=tasks) == gold


def test_generating_the_candidates_samples_the_gold_tasks_deterministically(make_set):
    task_set = make_set([f"Prompt {i}" for i in range(30)], k=2)
    # a generation that finds every prompt answered (a resume) still ends by sampling, then READY
    TaskSet.objects.filter(pk=task_set.pk).update(status=TaskSet.Status.GENERATING)
    assert candidates_generate(task_set_id=task_set.pk) == TaskSet.Status.READY
    sampled = set(task_set.tasks.filter(gold_sampled=True).values_list("pk", flat=True))
    assert len(sampled) == 2 and not task_set.tasks.filter(gold_order__isnull=False).exists()
    assert set(task_set_gold_sample(task_set=task_set)) == sampled  # the same draw every time
    assert task_set.tasks.filter(gold_sampled=True).count() == 2
    # the draw depends on the set's seed: across seeds, different tasks come out
    draws = set()
    for seed in range(8):
        TaskSet.objects.filter(pk=task_set.pk).update(seed=seed)
        task_set.refresh_from_db()
        draws.add(frozenset(task_set_gold_sample(task_set=task_set)))
    assert len(draws) > 1


def test_a_small_set_gets_no_sampled_gold(make_set):
    task_set = make_set([f"Prompt {i}" for i in range(9)], k=2)
    assert task_set_gold_sample(task_set=task_set) == []


def test_a_sampled_task_takes_the_unanimous_order_of_three_and_scores_only_later_labelers(make_set, labelers):
    ann, ben, cat = labelers
    dan, eve = make_user("dan", role=Role.LABELER), make_user("eve", role=Role.LABELER)
    task_set, task = gold_set(make_set, r=1)  # R = 1, yet every labeler meets it
    rank(task_set, ann, [2, 0, 1])
    rank(task_set, ben, [2, 0, 1])
    task.refresh_from_db()
    assert not task.is_gold  # two agree: not enough
    rank(task_set, cat, [2, 0, 1])
    task.refresh_from_db()
    assert task.gold_order == [2, 0, 1] and sorted(task.gold_agreed_by) == sorted([ann.pk, ben.pk, cat.pk])
    rank(task_set, dan, [2, 0, 1])
    rank(task_set, eve, [0, 2, 1])  # keeps 2>1 and 0>1, swaps 2>0
    people = {p.username: p for p in quality_report(task_set=task_set).labelers}
    assert [people[n].gold_accuracy for n in ("ann", "ben", "cat")] == [None, None, None]  # their own order
    assert people["dan"].gold_accuracy == 1.0 and people["eve"].gold_accuracy == pytest.approx(2 / 3)
    assert people["eve"].flagged and not people["dan"].flagged


def test_no_unanimity_no_gold_until_the_dissenter_is_excluded(make_set, labelers):
    ann, ben, cat = labelers
    dan = make_user("dan", role=Role.LABELER)
    task_set, task = gold_set(make_set)
    rank(task_set, ann, [1, 0, 2])
    rank(task_set, ben, [1, 0, 2])
    rank(task_set, cat, [0, 1, 2])
    rank(task_set, dan, [1, 0, 2])
    task.refresh_from_db()
    assert not task.is_gold and task.gold_sampled
    report = quality_report(task_set=task_set)
    assert (report.gold_tasks, report.gold_awaiting) == (0, 1)
    labeler_exclude(task_set=task_set, labeler=cat, excluded_by=None)
    task.refresh_from_db()
    assert task.gold_order == [1, 0, 2] and sorted(task.gold_agreed_by) == sorted([ann.pk, ben.pk, dan.pk])
    # excluding one of the panel leaves two: the order is withdrawn, and cat's return does not restore unanimity
    labeler_exclude(task_set=task_set, labeler=dan, excluded_by=None)
    task.refresh_from_db()
    assert not task.is_gold and task.gold_agreed_by == []
    labeler_include(task_set=task_set, labeler=cat)
    task.refresh_from_db()
    assert not task.is_gold


def test_a_panel_left_with_two_is_judged_again_on_the_rankings_that_still_count(make_set, labelers):
    ann, ben, cat = labelers
    dan = make_user("dan", role=Role.LABELER)
    task_set, task = gold_set(make_set)
    for labeler in (ann, ben, cat):
        rank(task_set, labeler, [0, 2, 1])
    rank(task_set, dan, [0, 2, 1])  # after the order was set: scored against it, not on the panel
    assert {p.username: p.gold_accuracy for p in quality_report(task_set=task_set).labelers}["dan"] == 1.0
    labeler_exclude(task_set=task_set, labeler=ann, excluded_by=None)
    task.refresh_from_db()  # ben and cat alone are too few; with dan, the counted rankings are unanimous again
    assert task.gold_order == [0, 2, 1] and sorted(task.gold_agreed_by) == sorted([ben.pk, cat.pk, dan.pk])
    people = {p.username: p for p in quality_report(task_set=task_set).labelers}
    assert people["dan"].gold_accuracy is None and people["ann"].gold_accuracy == 1.0


def test_the_admins_order_wins_and_scores_everyone(make_set, labelers):
    ann, ben, cat = labelers
    task_set, task = gold_set(make_set)
    for labeler in (ann, ben, cat):
        rank(task_set, labeler, [0, 1, 2])
    task_gold_set(task=task, order=[0, 2, 1])
    task.refresh_from_db()
    assert task.gold_order == [0, 2, 1] and task.gold_agreed_by == []
    people = {p.username: p for p in quality_report(task_set=task_set).labelers}
    assert [p.gold_accuracy for p in people.values()] == pytest.approx([2 / 3] * 3)
    task_gold_set(task=task, order=None)  # cleared: an ordinary task again, not awaiting an order
    task.refresh_from_db()
    assert not task.is_gold and not task.gold_sampled


def test_a_gold_task_looks_like_any_other_to_a_labeler(make_set, labelers):
    task_set, task = gold_set(make_set)
    as_ann = signed_in(labelers[0])
    task_url = as_ann.post(reverse("labeling:next", args=[task_set.pk])).url
    assert task_url == reverse("labeling:task", args=[task.pk])
    for _ in range(2):  # awaiting its order, then with one
        page = as_ann.get(task_url)
        assert page.status_code == 200 and "gold" not in page.content.decode().lower()
        task_gold_set(task=task, order=[1, 0, 2])
