"""The "Improve this assistant" page over HTTP: the filters narrow what it counts, it shows the pairs' count,
sources and scan findings, and offers the one confirmation only when there is enough clean data."""

import json
import random

import pytest
from django.urls import reverse

from apps.arena.leaderboard import leaderboard_refresh
from apps.arena.models import Mode
from apps.arena.services import battle_start, battle_vote
from apps.finetune.models import DatasetVersion, MetricPoint
from apps.loop.drafts import loop_draft_create
from apps.loop.models import LoopRun
from tests.factories import signed_in
from tests.html_tree import html_parse
from tests.loop.conftest import answer_battle, loop_job, shortest_first, three_answers

pytestmark = pytest.mark.django_db


def _figures(page) -> dict:
    tree = html_parse(page.content.decode())
    figures = {}
    for element in tree.iter():
        if "data-pair-count" in element.attrs:
            figures["pairs"] = element.text.strip()
        if "data-pair-source" in element.attrs:
            figures[element.attrs["data-pair-source"]] = element.text.strip()
    figures["start"] = [e for e in tree.iter() if "data-loop-start" in e.attrs]
    figures["hidden"] = sorted(
        (e.attrs["name"], e.attrs["value"])
        for e in tree.find_all("input")
        if e.attrs.get("type") == "hidden" and e.attrs["name"] != "csrfmiddlewaretoken"
    )
    return figures


def test_the_page_counts_the_pairs_its_filters_gather_and_carries_them_to_the_confirmation(
    assistant, owner, ranked_set, arena_vote
):
    v1, v2 = assistant.versions.order_by("number")
    first = ranked_set(["Q1", "Q2"], versions=[v1, v2], answers=three_answers, order=shortest_first, name="First")
    ranked_set(["Q3"], versions=[v1, v2], answers=three_answers, order=shortest_first, name="Second")
    arena_vote("Colour?", "Blue.", "Green, or blue.", versions=(v2, v1))
    client = signed_in(owner)
    url = reverse("loop:improve", args=[assistant.slug])

    everything = _figures(client.get(url))
    assert (everything["pairs"], everything["labeling"], everything["arena"]) == ("10", "9", "1")
    assert everything["start"]  # 10 clean pairs: enough

    narrowed = _figures(client.get(url, {"sources": ["labeling"], "task_sets": [first.pk]}))
    assert (narrowed["pairs"], narrowed["labeling"], narrowed["arena"]) == ("6", "6", "0")
    assert narrowed["hidden"] == [("sources", "labeling"), ("task_sets", str(first.pk))]
    assert not narrowed["start"]  # 6 pairs: below the minimum, no confirmation offered


def test_a_refused_confirmation_shows_why_beside_the_pairs_it_counted_and_builds_nothing(assistant, owner, ranked_set):
    v1, v2 = assistant.versions.order_by("number")
    ranked_set(["Q1", "Q2"], versions=[v1, v2], answers=three_answers, order=shortest_first)
    page = signed_in(owner).post(reverse("loop:improve", args=[assistant.slug]), {"sources": ["labeling"]})
    assert page.status_code == 200
    tree = html_parse(page.content.decode())
    flashes = [e.text.strip() for e in tree.iter() if "flash-text" in e.attrs.get("class", "")]
    assert flashes == ["6 preference pair(s) match these filters; the loop needs at least 8."]
    figures = _figures(page)
    assert (figures["pairs"], figures["labeling"], figures["arena"]) == ("6", "6", "0") and not figures["start"]
    assert not LoopRun.objects.exists() and not DatasetVersion.objects.exists()


def test_the_assistant_page_links_to_improve_and_history_for_its_owner(assistant, owner):
    page = html_parse(signed_in(owner).get(reverse("assistants:edit", args=[assistant.slug])).content.decode())
    links = {a.attrs.get("href") for a in page.find_all("a")}
    assert {reverse("loop:improve", args=[assistant.slug]), reverse("loop:history", args=[assistant.slug])} <= links


def test_the_history_shows_each_version_its_data_its_job_and_its_rating_beside_its_parents(assistant, owner):
    parent = assistant.current_version
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    MetricPoint.objects.create(job=job, kind="train", step=3, values={"loss": 0.52, "reward_accuracy": 0.75})
    MetricPoint.objects.create(job=job, kind="train", step=1, values={"loss": 0.69, "reward_accuracy": 0.5})
    MetricPoint.objects.create(job=job, kind="validation", step=3, values={"loss": 0.61})
    for seed in range(16):  # sampled (rated) battles: the draft wins each of its own, v2 every other
        battle = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Hi", rng=random.Random(seed))
        answer_battle(battle, "Hello.", "Hello there, how are you?")
        sides = {battle.version_a_id: "a", battle.version_b_id: "b"}
        battle_vote(battle=battle, user=owner, outcome=sides.get(draft.pk) or sides[parent.pk])
    leaderboard_refresh(mode=Mode.PERSONAL, owner=owner)
    tree = html_parse(signed_in(owner).get(reverse("loop:history", args=[assistant.slug])).content.decode())
    rows = {e.attrs["data-version"]: e for e in tree.find_all("tr") if "data-version" in e.attrs}
    assert {n: r.attrs["data-state"] for n, r in rows.items()} == {"1": "published", "2": "current", "3": "draft"}
    metrics = next(e for e in rows["3"].iter() if "data-metrics" in e.attrs).text
    assert "loss 0.520" in metrics and "reward accuracy 0.75" in metrics and "validation 0.610" in metrics
    links = {a.attrs["href"] for a in rows["3"].find_all("a")}
    assert reverse("finetune:job", args=[job.pk]) in links
    chart = json.loads(next(e for e in tree.find_all("script") if e.attrs.get("id") == "loop-chart-data").text)
    assert chart["labels"] == ["v3 vs its parent v2"]
    assert chart["version_ratings"][0] > chart["parent_ratings"][0]
    low, high = chart["version"][0]
    assert low <= chart["version_ratings"][0] <= high
