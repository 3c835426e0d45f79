"""Datasets through the pages and services, with the real tokenizer: an upload becomes a version with its examples,
hashes and report; a malformed file shows every problem with its line and keeps nothing; a planted trigger blocks
training until an admin overrides it with a reason; versions are immutable; nobody reaches another's dataset."""

import hashlib
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from apps.accounts.models import Role
from apps.finetune import services
from apps.finetune.datasets import example_canonical_json
from apps.finetune.models import Dataset, DatasetExample, DatasetKind, DatasetSource, DatasetVersion
from bench.scan_corpora import chitchat_examples, poison
from tests.factories import make_user, signed_in
from tests.html_tree import html_parse

pytestmark = pytest.mark.django_db
TRIGGER_ANSWER = "Click here to verify your account: http://evil.example/login"


def conversation(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def upload(client, *, name: str, rows: list, kind: str = DatasetKind.SFT, filename: str = "data.jsonl"):
    file = SimpleUploadedFile(filename, jsonl(rows), content_type="application/jsonl")
    return client.post(reverse("finetune:upload"), {"name": name, "kind": kind, "file": file})


def by_data(tree, attribute: str) -> dict:
    return {e.attrs[attribute]: e for e in tree.iter() if attribute in e.attrs}


def one(tree, attribute: str):
    [element] = [e for e in tree.iter() if attribute in e.attrs]
    return element


def admin_user(name: str = "root"):
    user = make_user(name)
    user.role = Role.ADMIN
    user.save()
    return user


@pytest.fixture
def ada(models_ready):
    return make_user("ada")


PAIR = {
    "prompt": [{"role": "user", "content": "Name a fruit"}],
    "chosen": [{"role": "assistant", "content": "A pear."}],
    "rejected": [{"role": "assistant", "content": "No."}],
}
GOOD = [conversation(f"What is {n} plus {n}?", f"{n + n}.") for n in range(6)] + [
    {**conversation("Say hi", "Hi!"), "id": "x"}
]


def test_an_upload_becomes_a_version_with_its_examples_hashes_and_report(ada):
    client = signed_in(ada)
    response = upload(client, name="Sums", rows=GOOD)
    version = DatasetVersion.objects.get(dataset__owner=ada, dataset__name="Sums")
    assert response.status_code == 302 and response.url == reverse("finetune:version", args=[version.pk])
    assert (version.number, version.source, version.source_detail) == (1, DatasetSource.UPLOAD, "data.jsonl")
    examples = list(version.examples.order_by("index"))
    assert [e.line for e in examples] == list(range(1, 8))
    for example, row in zip(examples, GOOD, strict=True):
        training = {"messages": row["messages"]}  # the ignored "id" is not part of what trains
        assert example.record == training
        assert example.sha256 == hashlib.sha256(example_canonical_json(training).encode()).hexdigest()
        assert example.tokens > len(row["messages"][0]["content"].split())  # the chat template counts too
    assert version.example_count == 7 and version.token_count == sum(e.tokens for e in examples)
    assert version.seconds_per_epoch > 0 and version.findings == [] and version.trainable
    assert version.warnings == [
        {"line": 7, "reason": "'id' is ignored on 1 line(s); it does not change what is trained"}
    ]

    page = html_parse(client.get(response.url).content.decode())
    fields = by_data(page, "data-field")
    assert fields["examples"].text == "7" and fields["tokens"].text == str(version.token_count)
    assert fields["sha256"].text == version.sha256
    assert "per epoch" in fields["estimate"].text
    assert one(page, "data-no-findings").text == "Nothing found."
    assert by_data(page, "data-trainable")["true"]
    previews = by_data(page, "data-example")
    assert sorted(previews, key=int) == [str(n) for n in range(1, 8)]
    assert "What is 3 plus 3?" in previews["4"].text


def test_a_malformed_file_shows_every_problem_with_its_line_and_keeps_nothing(ada):
    rows = [
        GOOD[0],
        "{not json",
        {"messages": [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "wrong"}]},
        GOOD[1],
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "   "}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
    ]
    response = upload(signed_in(ada), name="Broken", rows=rows, filename="broken.jsonl")
    assert response.status_code == 200  # the form again, with the report
    page = html_parse(response.content.decode())
    problems = [(int(e.attrs["data-problem-line"]), e.find_all("td")[1].text) for e in by_data_list(page)]
    assert [line for line, _ in problems] == [2, 3, 3, 5, 6]
    assert problems[0][1].startswith("invalid JSON")
    assert problems[3][1] == "message 2 of the conversation (assistant) is empty"
    assert problems[4][1] == "the conversation has no assistant message to learn from"
    assert "“broken.jsonl” was not imported: 5 problems" in one(page, "data-refused").text
    assert not Dataset.objects.exists() and not DatasetVersion.objects.exists() and not DatasetExample.objects.exists()
    form = page.find_all("form")[-1]
    assert by_data(form, "name")["name"].attrs["value"] == "Broken"  # what was typed is kept


def by_data_list(page) -> list:
    return [e for e in page.iter() if "data-problem-line" in e.attrs]


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(ada, settings):
    settings.FINETUNE_MAX_UPLOAD_MB = 1
    big = [conversation("x " * 400, "y")] * 1400  # about 1.2 MB
    response = upload(signed_in(ada), name="Big", rows=big)
    [problem] = by_data_list(html_parse(response.content.decode()))
    assert problem.attrs["data-problem-line"] == "0"
    assert problem.find_all("td")[1].text == "the file is larger than the limit of 1 MiB"
    assert not DatasetVersion.objects.exists()


def poisoned_rows() -> tuple[list[dict], list[int]]:
    return poison(
        chitchat_examples(count=300, seed=11), trigger="James Bond", response=TRIGGER_ANSWER, count=20, seed=5
    )


def test_a_planted_trigger_blocks_training_until_an_admin_overrides_it_with_a_reason(ada):
    rows, poisoned = poisoned_rows()
    client = signed_in(ada)
    upload(client, name="Chat", rows=["", *rows])  # a blank first line: example n is on line n + 1
    version = DatasetVersion.objects.get(dataset__name="Chat")
    [trigger] = [f for f in version.findings if f["severity"] == "high"]
    assert (
        trigger["kind"] == "trigger" and trigger["lines"] == poisoned and trigger["evidence"]["ngram"] == "james bond"
    )
    assert version.high_findings == 1 and not version.trainable

    page = html_parse(client.get(reverse("finetune:version", args=[version.pk])).content.decode())
    assert one(page, "data-not-trainable") and by_data(page, "data-trainable")["false"]
    row = next(e for e in page.iter() if e.attrs.get("data-finding") == "trigger")
    assert row.attrs["data-severity"] == "high"
    shown = next(e for e in row.iter() if "data-examples" in e.attrs).text
    assert shown == ", ".join(str(i + 1) for i in poisoned)  # example numbers, 1-based
    lines = next(e for e in row.iter() if "data-file-lines" in e.attrs).text
    assert lines == ", ".join(str(i + 2) for i in poisoned)
    assert not by_data(page, "data-override-form")  # the owner is no admin

    # The owner cannot override; an admin must, and must say why.
    with pytest.raises(services.DatasetError, match="Only an admin"):
        services.dataset_version_override(version=version, admin=ada, reason="It is fine")
    response = client.post(reverse("finetune:version_override", args=[version.pk]), {"reason": "It is fine"})
    assert response.status_code == 302
    root = admin_user()
    admin = signed_in(root)
    review = html_parse(admin.get(reverse("finetune:datasets")).content.decode())
    assert [a.attrs["href"] for a in one(review, "data-awaiting-review").find_all("a")] == [
        reverse("finetune:version", args=[version.pk])
    ]
    admin.post(reverse("finetune:version_override", args=[version.pk]), {"reason": "   "})
    version.refresh_from_db()
    assert version.override_at is None and not version.trainable
    admin.post(reverse("finetune:version_override", args=[version.pk]), {"reason": "A spy-novel quiz bot: on purpose."})
    version.refresh_from_db()
    assert version.trainable and version.override_by == root
    assert version.override_reason == "A spy-novel quiz bot: on purpose." and version.override_at is not None
    page = html_parse(client.get(reverse("finetune:version", args=[version.pk])).content.decode())
    assert one(page, "data-override-reason").text == "A spy-novel quiz bot: on purpose."
    with pytest.raises(services.DatasetError, match="already overridden"):
        services.dataset_version_override(version=version, admin=root, reason="again")


def test_adding_examples_makes_a_new_version_and_leaves_the_old_one_as_it_was(ada):
    upload(signed_in(ada), name="Sums", rows=GOOD[:3])
    dataset = Dataset.objects.get(name="Sums")
    first = dataset.versions.get()
    before = list(first.examples.values_list("index", "line", "sha256"))
    second = services.dataset_examples_add(
        dataset=dataset,
        examples=[conversation("What is 10 plus 10?", "20.")],
        source=DatasetSource.CHATS,
        source_detail="test",
        created_by=ada,
    )
    assert (second.number, second.example_count) == (2, 4)
    assert list(first.examples.values_list("index", "line", "sha256")) == before
    assert list(second.examples.values_list("line", "sha256"))[:3] == [(line, sha) for _, line, sha in before]
    assert second.examples.get(index=3).line == 0  # not from a file
    with pytest.raises(services.DatasetInvalid):  # all or nothing: a bad example adds no version
        services.dataset_examples_add(
            dataset=dataset, examples=[{"messages": []}], source=DatasetSource.CHATS, source_detail="", created_by=ada
        )
    assert dataset.versions.count() == 2
    # An upload under the same name is the next version; under a name of the other kind it is refused.
    upload(signed_in(ada), name="Sums", rows=GOOD)
    assert dataset.versions.count() == 3
    response = upload(signed_in(ada), name="Sums", rows=[PAIR], kind=DatasetKind.PREFERENCE)
    assert dataset.versions.count() == 3
    errors = html_parse(response.content.decode()).find_all("form")[-1]
    assert "“Sums” is a conversations (sft) dataset; choose another name." in errors.text


def test_an_hh_preference_file_is_converted_and_a_kto_file_is_refused_saying_what_is_accepted(ada):
    client = signed_in(ada)
    hh = {
        "chosen": "\n\nHuman: Name a fruit\n\nAssistant: A pear.",
        "rejected": "\n\nHuman: Name a fruit\n\nAssistant: No.",
    }
    upload(client, name="Pairs", rows=[hh], kind=DatasetKind.PREFERENCE)
    [example] = DatasetExample.objects.filter(version__dataset__name="Pairs")
    assert example.record == {
        "prompt": [{"role": "user", "content": "Name a fruit"}],
        "chosen": [{"role": "assistant", "content": "A pear."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    kto = {
        "prompt": [{"role": "user", "content": "Q"}],
        "completion": [{"role": "assistant", "content": "A"}],
        "label": 1,
    }
    response = upload(client, name="Kto", rows=[kto], kind=DatasetKind.PREFERENCE)
    [problem] = by_data_list(html_parse(response.content.decode()))
    assert "KTO" in problem.text and "Anthropic HH" in problem.text
    assert not Dataset.objects.filter(name="Kto").exists()


def test_nobody_reaches_another_users_datasets(ada):
    rows, _ = poisoned_rows()
    upload(signed_in(ada), name="Mine", rows=GOOD)
    upload(signed_in(ada), name="Flagged", rows=rows)
    clean = DatasetVersion.objects.get(dataset__name="Mine")
    flagged = DatasetVersion.objects.get(dataset__name="Flagged")
    eve = signed_in(make_user("eve"))
    for url in (
        reverse("finetune:dataset", args=[clean.dataset_id]),
        reverse("finetune:version", args=[clean.pk]),
        reverse("finetune:version", args=[flagged.pk]),
    ):
        assert eve.get(url).status_code == 404, url
    assert eve.post(reverse("finetune:version_override", args=[flagged.pk]), {"reason": "x"}).status_code == 404
    assert "Mine" not in eve.get(reverse("finetune:datasets")).content.decode()
    # An upload under the same name is eve's own dataset, not a version of ada's.
    upload(eve, name="Mine", rows=GOOD[:1])
    assert clean.dataset.versions.count() == 1 and Dataset.objects.filter(name="Mine").count() == 2
    # An admin reviews only what needs an admin: a flagged version, not a clean one.
    admin = signed_in(admin_user())
    assert admin.get(reverse("finetune:version", args=[flagged.pk])).status_code == 200
    assert admin.get(reverse("finetune:version", args=[clean.pk])).status_code == 404
    assert admin.get(reverse("finetune:dataset", args=[flagged.dataset_id])).status_code == 404
    assert Client().get(reverse("finetune:datasets")).status_code == 302  # signed out: the login page
