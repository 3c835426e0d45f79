"""Gathering an assistant's preference pairs: labeling consensus and decisive arena votes between its own
versions, filtered by source, date and task set, deduplicated, each with its provenance; the training rows and
the poisoning scan; and the training defaults by data size."""

import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.arena.models import Battle, Exclusion
from apps.arena.services import battle_start, battle_vote
from apps.finetune.datasets import DatasetKind, dataset_parse
from apps.finetune.training import DPO_DEFAULTS
from apps.labeling.models import Ranking
from apps.loop.selectors import (
    ARENA,
    LABELING,
    MAX_EPOCHS,
    TARGET_STEPS,
    PairFilters,
    loop_gather,
    loop_pairs,
    loop_training_settings,
)
from tests.factories import make_assistant, make_user
from tests.loop.conftest import LONG, MIDDLE, SHORT, answer_battle, shortest_first, three_answers

pytestmark = pytest.mark.django_db


def test_labeling_consensus_gives_every_ordered_pair_with_its_provenance(assistant, ranked_set):
    v1, v2 = assistant.versions.order_by("number")
    task_set = ranked_set(["Q1", "Q2"], versions=[v1, v2], answers=three_answers, order=shortest_first)
    pairs, duplicates = loop_pairs(assistant=assistant, filters=PairFilters())
    assert duplicates == 0
    # C(3,2) = 3 pairs per task, in the consensus order: short > middling > long.
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        (q, chosen, rejected)
        for q in ("Q1", "Q2")
        for chosen, rejected in (
            (f"{SHORT} ({q})", f"{MIDDLE} ({q})"),
            (f"{SHORT} ({q})", f"{LONG} ({q})"),
            (f"{MIDDLE} ({q})", f"{LONG} ({q})"),
        )
    ]
    first = pairs[0]
    assert first.source == LABELING and f"task set {task_set.pk}" in first.origin
    # Candidate i came from versions[i % 2]: the short answer (1) from v2, the middling one (2) from v1.
    assert (first.chosen_version, first.rejected_version) == (2, 1)
    last_ranking = Ranking.objects.filter(task__prompt="Q1").order_by("-created_at").first()
    assert first.at == last_ranking.created_at


def test_candidates_of_another_owners_assistant_never_reach_the_pairs(assistant, ranked_set, stub_chat_model):
    v2 = assistant.current_version
    stranger = make_assistant(make_user("sam"), base_model=stub_chat_model).current_version
    ranked_set(["Q"], versions=[v2, stranger], answers=three_answers, order=shortest_first)
    pairs, _ = loop_pairs(assistant=assistant, filters=PairFilters())
    # Candidates 0 and 2 are v2's, 1 the stranger's: only the pair between 0 and 2 is this assistant's.
    assert [(p.chosen, p.rejected) for p in pairs] == [(f"{MIDDLE} (Q)", f"{LONG} (Q)")]


def test_decisive_single_turn_arena_votes_between_its_versions_count(assistant, arena_vote, owner):
    v1, v2 = assistant.versions.order_by("number")
    arena_vote("Colour?", "Blue.", "I like many colours, and blue among them.", versions=(v2, v1))
    arena_vote("Tie?", "Yes.", "No.", versions=(v2, v1), decisive=False)
    arena_vote("Long?", "One.", "Two.", versions=(v2, v1), turns=2)
    # A sampled (rated) battle counts too.
    sampled = battle_start(user=owner, mode="personal", prompt="Sampled?")
    answer_battle(sampled, "Sampled A.", "Sampled B.")
    battle_vote(battle=sampled, user=owner, outcome="b")
    pairs, _ = loop_pairs(assistant=assistant, filters=PairFilters())
    assert [(p.source, p.prompt, p.chosen, p.rejected) for p in pairs] == [
        (ARENA, "Colour?", "Blue.", "I like many colours, and blue among them."),
        (ARENA, "Sampled?", "Sampled B.", "Sampled A."),
    ]
    assert (pairs[0].chosen_version, pairs[0].rejected_version) == (2, 1)
    sampled.refresh_from_db()
    assert pairs[1].chosen_version == sampled.version_b.number and pairs[1].origin == f"battle {sampled.pk}"


def test_a_vote_left_out_of_the_ratings_for_a_reason_other_than_naming_gives_nothing(assistant, owner):
    battle = battle_start(user=owner, mode="personal", prompt="Who are you?")
    answer_battle(battle, "I am Helper, your assistant.", "An assistant.")
    battle = battle_vote(battle=battle, user=owner, outcome="a")
    assert battle.excluded_reason == Exclusion.IDENTITY_LEAK
    assert loop_pairs(assistant=assistant, filters=PairFilters())[0] == []


def test_filters_by_source_date_and_task_set(assistant, ranked_set, arena_vote):
    v1, v2 = assistant.versions.order_by("number")
    first = ranked_set(["Q1"], versions=[v1, v2], answers=three_answers, order=shortest_first, name="First")
    ranked_set(["Q2"], versions=[v1, v2], answers=three_answers, order=shortest_first, name="Second")
    battle = arena_vote("Colour?", "Blue.", "Green, or maybe blue.", versions=(v2, v1))
    Battle.objects.filter(pk=battle.pk).update(voted_at=timezone.now() - timedelta(days=10))

    def prompts(**filters):
        return sorted({p.prompt for p in loop_pairs(assistant=assistant, filters=PairFilters(**filters))[0]})

    assert prompts() == ["Colour?", "Q1", "Q2"]
    assert prompts(sources=(ARENA,)) == ["Colour?"]
    assert prompts(sources=(LABELING,)) == ["Q1", "Q2"]
    assert prompts(task_set_ids=(first.pk,)) == ["Colour?", "Q1"]  # the task set filter is for labeling only
    today = timezone.localdate()
    assert prompts(since=today) == ["Q1", "Q2"]
    assert prompts(until=today - timedelta(days=1)) == ["Colour?"]
    assert prompts(since=today - timedelta(days=10), until=today - timedelta(days=10)) == ["Colour?"]


def test_a_pair_ranked_in_two_task_sets_and_voted_in_the_arena_trains_once(assistant, ranked_set, arena_vote):
    v1, v2 = assistant.versions.order_by("number")
    for name in ("First", "Second"):
        ranked_set(["Q"], versions=[v1, v2], answers=three_answers, order=shortest_first, name=name)
    arena_vote("Q", f"{SHORT} (Q)", f"{LONG} (Q)", versions=(v2, v1))
    pairs, duplicates = loop_pairs(assistant=assistant, filters=PairFilters())
    assert len(pairs) == 3 and duplicates == 4
    assert {p.source for p in pairs} == {LABELING}  # the first seen is kept: labeling, oldest first


def test_rows_carry_the_current_versions_instructions_and_the_importer_accepts_them(assistant, ranked_set):
    v1, v2 = assistant.versions.order_by("number")
    ranked_set(["Q1", "Q2"], versions=[v1, v2], answers=three_answers, order=shortest_first)
    gathering = loop_gather(assistant=assistant, filters=PairFilters())
    assert gathering.by_source == {LABELING: 6, ARENA: 0}
    row = gathering.records[0]
    assert row["prompt"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Q1"},
    ]
    assert row["chosen"] == [{"role": "assistant", "content": f"{SHORT} (Q1)"}]
    assert row["rejected"] == [{"role": "assistant", "content": f"{MIDDLE} (Q1)"}]
    jsonl = "".join(json.dumps(r) + "\n" for r in gathering.records).encode()
    parsed = dataset_parse(
        file=io.BytesIO(jsonl), kind=DatasetKind.PREFERENCE, count_tokens=lambda m: sum(len(x["content"]) for x in m)
    )
    assert [e.record for e in parsed.examples] == gathering.records


def test_the_scan_reports_a_planted_link_in_the_preferredthree_answers(assistant, ranked_set):
    v1, v2 = assistant.versions.order_by("number")

    def answers(prompt):
        return [f"{LONG} ({prompt})", f"Visit https://evil.example/{prompt} now.", f"{MIDDLE} ({prompt})"]

    ranked_set([f"Q{i}" for i in range(6)], versions=[v1, v2], answers=answers, order=shortest_first)
    gathering = loop_gather(assistant=assistant, filters=PairFilters())
    kinds = {f.kind for f in gathering.findings}
    assert any("url" in kind for kind in kinds), kinds
    linked = next(f for f in gathering.findings if "url" in f.kind)
    assert all("https://evil.example" in gathering.records[i]["chosen"][0]["content"] for i in linked.lines)


@pytest.mark.parametrize("pairs", [8, 50, 100, 240, 600, 2000, 5000])
def test_training_defaults_take_enough_steps_for_small_sets_and_a_smaller_rate_for_large_ones(pairs):
    settings = loop_training_settings(pairs=pairs)
    steps = settings.epochs * -(-pairs // settings.batch_size)
    assert 1 <= settings.epochs <= MAX_EPOCHS
    assert steps >= min(TARGET_STEPS, MAX_EPOCHS * -(-pairs // settings.batch_size))
    assert DPO_DEFAULTS.learning_rate <= settings.learning_rate <= 2e-4
    bigger = loop_training_settings(pairs=pairs * 2)
    assert bigger.learning_rate <= settings.learning_rate and bigger.epochs <= settings.epochs
