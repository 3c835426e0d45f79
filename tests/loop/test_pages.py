"""The "Improve this assistant" page over HTTP: the filters narrow what it counts, it shows the pairs' count,
sources and scan findings, and offers the one confirmation only when there is enough clean data."""

import pytest
from django.urls import reverse

from tests.factories import signed_in
from tests.html_tree import html_parse
from tests.loop.conftest import shortest_first, three_answers

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


def test_the_assistant_page_links_to_improve_and_history_for_its_owner(assistant, owner):
    page = html_parse(signed_in(owner).get(reverse("assistants:edit", args=[assistant.slug])).content.decode())
    links = {a.attrs.get("href") for a in page.find_all("a")}
    assert {reverse("loop:improve", args=[assistant.slug]), reverse("loop:history", args=[assistant.slug])} <= links
