"""Exports: consensus pairs (C(K,2), chosen above rejected), what yields nothing (not rankable, ties, excluded
labelers), splits by prompt, and the three formats; the DPO file as the fine-tune importer and the real chat template
read it."""

import io
import json
from itertools import combinations

import pytest
from django.urls import reverse
from transformers import AutoTokenizer

from apps.finetune.datasets import DatasetKind, chat_token_counter, dataset_parse
from apps.labeling.models import Ranking
from apps.labeling.selectors import export_jsonl, export_rows, preference_pairs, prompt_split
from apps.labeling.services import labeler_exclude, ranking_submit, task_claim_next, task_gold_set
from tests.factories import signed_in

pytestmark = pytest.mark.django_db


def rank(task_set, labeler, orders_by_prompt: dict):
    """`labeler` claims and ranks every task of the set they are given, by prompt (None: not rankable)."""
    while (claim := task_claim_next(task_set=task_set, labeler=labeler)) is not None:
        order = orders_by_prompt[claim.task.prompt]
        ranking_submit(
            task=claim.task,
            labeler=labeler,
            order=order,
            not_rankable_reason="" if order is not None else "Broken",
            confirm_presented=True,
        )


def test_a_consensus_of_k_candidates_yields_every_pair_chosen_above_rejected(make_set, labelers):
    task_set = make_set(["Q"], k=4)
    for labeler in labelers:
        rank(task_set, labeler, {"Q": [2, 0, 3, 1]})
    pairs = preference_pairs(task_set=task_set)
    assert len(pairs) == 6  # C(4, 2)
    consensus = ["Q / answer 2", "Q / answer 0", "Q / answer 3", "Q / answer 1"]
    assert {(p.chosen, p.rejected) for p in pairs} == set(combinations(consensus, 2))


def test_ties_not_rankable_tasks_and_excluded_labelers_yield_nothing(make_set, labelers, admin):
    ann, ben, _ = labelers
    task_set = make_set(["Tie", "Broken", "Split"], k=2, r=2)
    rank(task_set, ann, {"Tie": [0, 1], "Broken": None, "Split": [0, 1]})
    rank(task_set, ben, {"Tie": [1, 0], "Broken": None, "Split": [1, 0]})
    assert preference_pairs(task_set=task_set) == []  # a 1–1 margin is a tie; "Broken" is not rankable
    labeler_exclude(task_set=task_set, labeler=ann, excluded_by=admin)
    pairs = preference_pairs(task_set=task_set)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("Tie", "Tie / answer 1", "Tie / answer 0"),
        ("Split", "Split / answer 1", "Split / answer 0"),
    ]  # only ben counts now


def test_a_majority_sets_the_order_and_a_weak_pair_still_counts(make_set, labelers):
    task_set = make_set(["Q"], k=3)
    orders = [[0, 1, 2], [0, 1, 2], [1, 0, 2]]
    for labeler, order in zip(labelers, orders, strict=True):
        rank(task_set, labeler, {"Q": order})
    pairs = {(p.chosen[-1], p.rejected[-1]) for p in preference_pairs(task_set=task_set)}
    assert pairs == {("0", "1"), ("0", "2"), ("1", "2")}


def test_a_gold_task_exports_its_gold_order(make_set, labelers):
    task_set = make_set(["Gold"], k=3, r=1)
    task_gold_set(task=task_set.tasks.get(), order=[1, 2, 0])
    rank(task_set, labelers[0], {"Gold": [0, 1, 2]})
    pairs = [(p.chosen[-1], p.rejected[-1]) for p in preference_pairs(task_set=task_set)]
    assert pairs == [("1", "2"), ("1", "0"), ("2", "0")]


def test_splits_are_made_by_prompt(make_set, labelers):
    prompts = [f"Prompt number {i}" for i in range(40)]
    task_set = make_set(prompts + prompts[:5], k=2, r=1)  # five prompts twice: both copies in one split
    rank(task_set, labelers[0], {p: [1, 0] for p in prompts})
    train = export_rows(task_set=task_set, export_format="trl", split="train", test_fraction=0.3)
    test = export_rows(task_set=task_set, export_format="trl", split="test", test_fraction=0.3)
    every = export_rows(task_set=task_set, export_format="trl", split="all")
    train_prompts = {row["prompt"][0]["content"] for row in train}
    test_prompts = {row["prompt"][0]["content"] for row in test}
    assert train_prompts and test_prompts and not train_prompts & test_prompts
    assert len(train) + len(test) == len(every) == 45
    assert all(prompt_split(prompt=p, test_fraction=0.3) == "test" for p in test_prompts)


def test_trl_export_is_trls_conversational_preference_format(make_set, labelers, real_models):
    task_set = make_set(["What is 2+2?", "Name a colour."], k=3)
    for labeler in labelers:
        rank(task_set, labeler, {"What is 2+2?": [1, 0, 2], "Name a colour.": [2, 1, 0]})
    rows = export_rows(task_set=task_set, export_format="trl")
    assert len(rows) == 6
    tokenizer = AutoTokenizer.from_pretrained(real_models[("smollm2-135m-instruct", "fp32")] / "hf")
    for row in rows:
        # TRL's conversational preference example: exactly these keys, each a list of {"role", "content"}
        # messages; the prompt ends with the user, chosen and rejected are one assistant turn each
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert row["chosen"] != row["rejected"]
        for key in ("prompt", "chosen", "rejected"):
            assert all(set(message) == {"role", "content"} for message in row[key])
        for key in ("chosen", "rejected"):
            assert len(row[key]) == 1 and row[key][0]["role"] == "assistant"
            # what a preference trainer formats: the prompt and one answer through the model's chat template
            text = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)
            assert row["prompt"][0]["content"] in text and text.rstrip().endswith(row[key][0]["content"] + "<|im_end|>")
    assert json.loads(json.dumps(rows[0])) == rows[0]


def test_hh_and_kto_exports(make_set, labelers):
    task_set = make_set(["Q"], k=3)
    for labeler in labelers:
        rank(task_set, labeler, {"Q": [2, 1, 0]})
    hh = export_rows(task_set=task_set, export_format="hh")
    assert len(hh) == 3
    for row in hh:
        assert set(row) == {"chosen", "rejected"}
        prefix = "\n\nHuman: Q\n\nAssistant: "
        assert row["chosen"].startswith(prefix) and row["rejected"].startswith(prefix)
    assert hh[0]["chosen"] == "\n\nHuman: Q\n\nAssistant: Q / answer 2"
    kto = export_rows(task_set=task_set, export_format="kto")
    labels = {row["completion"][0]["content"]: row["label"] for row in kto}
    assert labels == {"Q / answer 2": True, "Q / answer 0": False}  # the middle one is neither
    assert all(set(row) == {"prompt", "completion", "label"} for row in kto)
    assert all(row["completion"][0]["role"] == "assistant" and row["prompt"][0]["role"] == "user" for row in kto)


def test_the_download_is_jsonl_for_admins_only(make_set, labelers, admin):
    task_set = make_set(["Q"], k=2)
    for labeler in labelers:
        rank(task_set, labeler, {"Q": [1, 0]})
    url = reverse("labeling:export", args=[task_set.pk]) + "?format=trl&split=all"
    response = signed_in(admin).get(url)
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    rows = [json.loads(line) for line in response.content.decode().splitlines()]
    assert rows == export_rows(task_set=task_set, export_format="trl")
    assert signed_in(labelers[0]).get(url).status_code == 403
    assert Ranking.objects.filter(task__task_set=task_set).count() == 3


def test_pairs_follow_the_consensus_order_even_inside_a_majority_cycle(make_set, labelers):
    # margins: 0>1 by 1, 1>2 by 1, 2>0 by 1; ranked pairs locks 0>1, 1>2 and drops 2>0: consensus 0, 1, 2
    task_set = make_set(["Cycle"], k=3)
    for labeler, order in zip(labelers, ([0, 1, 2], [1, 2, 0], [2, 0, 1]), strict=True):
        rank(task_set, labeler, {"Cycle": order})
    pairs = [(p.chosen[-1], p.rejected[-1]) for p in preference_pairs(task_set=task_set)]
    assert pairs == [("0", "1"), ("0", "2"), ("1", "2")]  # C(3,2), one consistent order


def test_the_fine_tune_importer_accepts_the_dpo_export(make_set, labelers, real_models):
    task_set = make_set(["What is 2+2?", "Name a colour."], k=3)
    for labeler in labelers:
        rank(task_set, labeler, {"What is 2+2?": [1, 0, 2], "Name a colour.": [2, 1, 0]})
    exported = export_jsonl(task_set=task_set, export_format="trl", split="all")
    tokenizer_dir = real_models[("smollm2-135m-instruct", "fp32")] / "hf"
    dataset = dataset_parse(
        file=io.BytesIO(exported.encode()),
        kind=DatasetKind.PREFERENCE,
        count_tokens=chat_token_counter(tokenizer_dir=tokenizer_dir),
    )
    assert len(dataset.examples) == 6 and dataset.warnings == ()
    assert [e.record for e in dataset.examples] == export_rows(task_set=task_set, export_format="trl")


def test_pairs_of_equal_or_empty_answers_yield_nothing(make_set, labelers):
    task_set = make_set(["Q"], k=3)
    candidates = {c.index: c for c in task_set.tasks.get().candidates.all()}
    candidates[1].text = candidates[0].text  # the same answer twice
    candidates[2].text = " \u200b\n"  # empty once the invisible character is gone
    for candidate in candidates.values():
        candidate.save()
    for labeler in labelers:
        rank(task_set, labeler, {"Q": [0, 1, 2]})
    assert preference_pairs(task_set=task_set) == []
