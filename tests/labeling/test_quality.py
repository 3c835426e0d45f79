"""The quality report against hand-computed values and the aggregation functions, exclusions, and the admin page."""

import json
import math
import re

import pytest
from django.urls import reverse

from apps.labeling.aggregation import cohen_kappa, krippendorff_alpha_nominal
from apps.labeling.selectors import quality_report
from apps.labeling.services import labeler_exclude, ranking_submit, task_claim_next, task_gold_set
from tests.factories import signed_in

pytestmark = pytest.mark.django_db


def rank_all(task_set, labeler, orders: dict):
    while (claim := task_claim_next(task_set=task_set, labeler=labeler)) is not None:
        ranking_submit(task=claim.task, labeler=labeler, order=orders[claim.task.prompt], confirm_presented=True)


def test_agreement_tau_and_flags_by_hand(make_set, labelers):
    ann, ben, cat = labelers
    task_set = make_set(["A", "B"], k=3)
    rank_all(task_set, ann, {"A": [0, 1, 2], "B": [2, 1, 0]})
    rank_all(task_set, ben, {"A": [0, 1, 2], "B": [2, 1, 0]})
    rank_all(task_set, cat, {"A": [2, 1, 0], "B": [0, 1, 2]})  # the exact reverse of the others
    report = quality_report(task_set=task_set)
    people = {p.username: p for p in report.labelers}
    # leave-one-out: cat is measured against ann and ben, who agree (τ = −1, flagged); ann against ben and cat,
    # who tie on every pair, so nothing measures ann (nor ben) rather than an arbitrary tie-break
    assert people["ann"].tau is None and people["ben"].tau is None and people["cat"].tau == -1.0
    assert [p.username for p in report.labelers if p.flagged] == ["cat"]
    # items are the 6 candidate pairs; ann and ben agree on all, cat disagrees on all
    kappas = {(a, b): k for a, b, k, shared in report.kappas}
    assert kappas[("ann", "ben")] == 1.0 and all(shared == 6 for *_, shared in report.kappas)
    ann_labels = [True, True, True, False, False, False]  # A: 0>1, 0>2, 1>2 ; B: reversed
    cat_labels = [not x for x in ann_labels]
    assert kappas[("ann", "cat")] == pytest.approx(cohen_kappa(ann_labels, cat_labels))
    expected_alpha = krippendorff_alpha_nominal([ann_labels, ann_labels, cat_labels])
    assert report.alpha == pytest.approx(expected_alpha)
    assert report.tasks_complete == 2 and report.rankings == 6

    labeler_exclude(task_set=task_set, labeler=cat, excluded_by=None)
    report = quality_report(task_set=task_set)
    assert report.alpha == 1.0 and [(a, b) for a, b, *_ in report.kappas] == [("ann", "ben")]
    assert {p.username: p.excluded for p in report.labelers} == {"ann": False, "ben": False, "cat": True}


def test_tau_leaves_the_labelers_own_ranking_out_of_the_consensus(make_set, labelers):
    ann, ben, cat = labelers
    task_set = make_set(["A"], k=3)
    rank_all(task_set, ann, {"A": [0, 1, 2]})
    rank_all(task_set, ben, {"A": [0, 2, 1]})
    rank_all(task_set, cat, {"A": [1, 0, 2]})
    people = {p.username: p for p in quality_report(task_set=task_set).labelers}
    # With ann's own ranking the consensus would be ann's order exactly (τ = 1). Without it, ben and cat agree
    # only on 0 above 2 (0–1 and 1–2 tie): one concordant pair, τ-b = 1 / √(3 · 1).
    assert people["ann"].tau == pytest.approx(1 / math.sqrt(3))
    # ann and cat agree on 0>2 and 1>2 (0–1 ties); ben keeps 0>2 and swaps 1>2: (1 − 1) / √(3 · 2) = 0
    assert people["ben"].tau == 0.0
    # ann and ben agree on 0>1 and 0>2; cat swaps 0>1 and keeps 0>2: 0
    assert people["cat"].tau == 0.0


def test_an_excluded_labeler_is_measured_against_the_counted_ones_only(make_set, labelers):
    ann, ben, cat = labelers
    task_set = make_set(["A"], k=3)
    rank_all(task_set, ann, {"A": [0, 1, 2]})
    rank_all(task_set, ben, {"A": [2, 1, 0]})
    rank_all(task_set, cat, {"A": [0, 1, 2]})
    labeler_exclude(task_set=task_set, labeler=ben, excluded_by=None)
    people = {p.username: p for p in quality_report(task_set=task_set).labelers}
    # ann's reference is cat alone (with ben, every pair would tie); ben's is ann and cat
    assert people["ann"].tau == 1.0 and people["cat"].tau == 1.0 and people["ben"].tau == -1.0


def test_the_django_admin_lists_every_labeling_model_read_only(make_set, labelers):
    from apps.accounts.models import User

    task_set = make_set(["A"], k=2)
    rank_all(task_set, labelers[0], {"A": [1, 0]})
    root = signed_in(User.objects.create_superuser(username="superroot", password="x"))
    for model in ("taskset", "guideline", "task", "claim", "ranking", "labelerexclusion"):
        assert root.get(reverse(f"admin:labeling_{model}_changelist")).status_code == 200, model
        assert root.get(reverse(f"admin:labeling_{model}_add")).status_code == 403, model
    task = task_set.tasks.get()
    page = root.get(reverse("admin:labeling_task_change", args=[task.pk]))
    assert page.status_code == 200 and "A / answer 1" in page.content.decode()  # its candidates, inline


def test_gold_accuracy_is_the_share_of_gold_pairs_kept(make_set, labelers):
    ann, ben, _ = labelers
    task_set = make_set(["Gold"], k=3, r=1)
    task_gold_set(task=task_set.tasks.get(), order=[0, 1, 2])
    rank_all(task_set, ann, {"Gold": [0, 1, 2]})
    rank_all(task_set, ben, {"Gold": [0, 2, 1]})  # keeps 0>1 and 0>2, swaps 1>2
    people = {p.username: p for p in quality_report(task_set=task_set).labelers}
    assert people["ann"].gold_accuracy == 1.0
    assert people["ben"].gold_accuracy == pytest.approx(2 / 3)
    assert people["ben"].flagged  # below the 0.7 gold threshold


def test_the_admin_page_shows_agreement_and_chart_data(make_set, labelers, admin):
    task_set = make_set(["A"], k=2)
    rank_all(task_set, labelers[0], {"A": [1, 0]})
    rank_all(task_set, labelers[1], {"A": [1, 0]})
    response = signed_in(admin).get(reverse("labeling:set_admin", args=[task_set.pk]))
    assert response.status_code == 200
    element = re.search(r'<script id="quality-data" type="application/json">(.*?)</script>', response.content.decode())
    chart = json.loads(element.group(1))  # what static/js/labeling.js draws
    assert chart["labelers"] == ["ann", "ben"] and chart["tau"] == [1.0, 1.0]
    assert response.context["report"].alpha == 1.0
