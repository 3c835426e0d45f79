"""Writes for fine-tuning. Datasets: every way of building one ends in `dataset_version_create`.

- `dataset_version_create` is the one writer of versions: it scans the examples for poisoning
  (`scan.dataset_scan`), numbers the version under the dataset's row lock (two writers never get one number)
  and stores every example with its source line, tokens and sha256. A version is never changed afterwards,
  except for an admin's override of its high-severity findings (`dataset_version_override`, with a reason).
- `dataset_upload`: a JSONL file, all or nothing. An Anthropic HH preference file is converted to TRL's format
  first (`formats.py`); a file with any problem imports nothing and raises `DatasetInvalid` with every problem
  and its line. Tokens are counted with the training base model's own tokenizer and chat template.
- `dataset_examples_add`: a new version holding the latest version's examples (as validated then, with their
  provenance) and the new ones (validated now). Curating from chat and importing go through it or through
  `dataset_version_create`.
- Curate from chat: `answer_mark_good` adds the exchange up to an answer as a conversation;
  `answer_edit_ideal` adds the exchange with the owner's edited answer, and the pair (edited above original)
  to a preference dataset. The exchange starts with the instructions the answer was given (rendered as the
  engine rendered them, without retrieved knowledge): an adapter learns best under the prompt it will serve.
  Only the assistant's owner gets them: a user of someone else's public assistant never sees its instructions.
- `dataset_import_from_task_set`: the labeling panel's consensus pairs as TRL conversational examples.

Errors: `DatasetInvalid` (from `datasets.py`) for examples that are refused, with every problem; `DatasetError`
for everything else a person can fix (a name used by a dataset of the other kind, no base model yet, a
missing reason).
"""

import io
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.assistants.engine import instructions_render
from apps.chat.models import Message
from apps.chat.selectors import message_ancestors
from apps.core.unicode import unicode_clean
from apps.finetune import datasets
from apps.finetune.datasets import DatasetInvalid, Example, Problem, dataset_from_examples, dataset_parse
from apps.finetune.formats import preference_file_convert
from apps.finetune.models import Dataset, DatasetExample, DatasetKind, DatasetSource, DatasetVersion
from apps.finetune.scan import dataset_scan
from apps.finetune.selectors import is_admin, tokenizer_dir_get
from apps.labeling.models import TaskSet
from apps.labeling.selectors import export_jsonl


class DatasetError(Exception):
    """A refusal a person can act on; the message says what to do."""


@lru_cache(maxsize=2)
def _token_counter(tokenizer_dir: Path) -> Callable[[list[dict]], int]:
    return datasets.chat_token_counter(tokenizer_dir=tokenizer_dir)


def _count_tokens() -> Callable[[list[dict]], int]:
    tokenizer_dir = tokenizer_dir_get()
    if tokenizer_dir is None:
        raise DatasetError("The base model is not installed yet, so examples cannot be counted; try again once it is.")
    return _token_counter(tokenizer_dir)


def _name_clean(name: str) -> str:
    name = unicode_clean(name).text.strip()
    if not name:
        raise DatasetError("Give the dataset a name.")
    if len(name) > Dataset._meta.get_field("name").max_length:
        raise DatasetError("The dataset's name is too long (100 characters at most).")
    return name


def _dataset_for(*, owner, name: str, kind: str) -> Dataset:
    dataset, _ = Dataset.objects.get_or_create(owner=owner, name=name, defaults={"kind": kind})
    if dataset.kind != kind:
        raise DatasetError(f"“{name}” is a {dataset.get_kind_display().lower()} dataset; choose another name.")
    return dataset


def dataset_version_create(
    *,
    owner,
    kind: str,
    name: str,
    parsed: datasets.Dataset,
    source: str,
    source_detail: str = "",
    created_by,
    dataset: Dataset | None = None,
) -> DatasetVersion:
    """The next version of `dataset` (or of the owner's dataset called `name`, made if new) holding `parsed`."""
    if parsed.kind != kind:
        raise DatasetError(f"These are {parsed.kind} examples, not {kind} ones.")
    findings = [asdict(finding) for finding in dataset_scan(examples=parsed.records)]
    with transaction.atomic():
        if dataset is None:
            dataset = _dataset_for(owner=owner, name=_name_clean(name), kind=kind)
        elif dataset.owner_id != owner.pk or dataset.kind != kind:
            raise DatasetError("That dataset is not yours, or not of this kind.")
        Dataset.objects.select_for_update().filter(pk=dataset.pk).get()  # numbers are given out one at a time
        number = (dataset.versions.aggregate(last=Max("number"))["last"] or 0) + 1
        version = DatasetVersion.objects.create(
            dataset=dataset,
            number=number,
            source=source,
            source_detail=source_detail[: DatasetVersion._meta.get_field("source_detail").max_length],
            created_by=created_by,
            sha256=parsed.sha256,
            example_count=len(parsed.examples),
            token_count=parsed.tokens,
            seconds_per_epoch=parsed.seconds_per_epoch,
            warnings=[{"line": w.line, "reason": w.reason} for w in parsed.warnings],
            findings=findings,
            high_findings=sum(1 for f in findings if f["severity"] == "high"),
        )
        DatasetExample.objects.bulk_create(
            (
                DatasetExample(version=version, index=i, line=e.line, record=e.record, tokens=e.tokens, sha256=e.sha256)
                for i, e in enumerate(parsed.examples)
            ),
            batch_size=1000,
        )
    return version


def dataset_upload(*, owner, name: str, kind: str, file: BinaryIO) -> DatasetVersion:
    """A new version (of the owner's dataset `name`, made if new) from an uploaded JSONL file, all or nothing."""
    name = _name_clean(name)
    limit = settings.FINETUNE_MAX_UPLOAD_MB * 2**20
    if getattr(file, "size", 0) > limit:  # refused from its declared size, before it is read into memory
        raise DatasetInvalid(
            [Problem(0, f"the file is larger than the limit of {settings.FINETUNE_MAX_UPLOAD_MB} MiB")]
        )
    raw = file.read(limit + 1)
    format_problems: list[Problem] = []
    if kind == DatasetKind.PREFERENCE and len(raw) <= limit:
        raw, format_problems = preference_file_convert(raw)
    try:
        parsed = dataset_parse(file=io.BytesIO(raw), kind=kind, count_tokens=_count_tokens(), max_bytes=limit)
    except DatasetInvalid as error:
        raise DatasetInvalid(sorted(format_problems + error.problems, key=lambda p: p.line), error.more) from error
    if format_problems:
        raise DatasetInvalid(format_problems)
    filename = getattr(file, "name", "") or "upload.jsonl"
    return dataset_version_create(
        owner=owner,
        kind=kind,
        name=name,
        parsed=parsed,
        source=DatasetSource.UPLOAD,
        source_detail=filename,
        created_by=owner,
    )


def dataset_version_override(*, version: DatasetVersion, admin, reason: str) -> DatasetVersion:
    """Let a version with high-severity findings train: an admin's decision, with a written reason, on record."""
    if not is_admin(admin):
        raise DatasetError("Only an admin can override the poisoning scan.")
    reason = unicode_clean(reason).text.strip()
    if not reason:
        raise DatasetError("Write why these findings are acceptable: the reason is kept with the version.")
    with transaction.atomic():
        version = DatasetVersion.objects.select_for_update().get(pk=version.pk)
        if not version.high_findings:
            raise DatasetError("This version has no high-severity finding; it can train as it is.")
        if version.override_at is not None:
            raise DatasetError(
                f"This version was already overridden by {version.override_by} at {version.override_at}."
            )
        version.override_reason, version.override_by, version.override_at = reason, admin, timezone.now()
        version.save(update_fields=["override_reason", "override_by", "override_at"])
    return version


def _records_parse(records: list[dict], kind: str) -> datasets.Dataset:
    """New examples validated exactly as an uploaded file's (they are not from a file: line 0)."""
    raw = "".join(datasets.example_canonical_json(record) + "\n" for record in records).encode()
    parsed = dataset_parse(file=io.BytesIO(raw), kind=kind, count_tokens=_count_tokens())
    return dataset_from_examples(
        kind=kind, examples=[Example(0, e.record, e.tokens, e.sha256) for e in parsed.examples]
    )


def dataset_examples_add(
    *, dataset: Dataset, examples: list[dict], source: str, source_detail: str, created_by
) -> DatasetVersion:
    """The next version: the latest version's examples, then `examples` (validated; all or nothing)."""
    new = _records_parse(examples, dataset.kind)
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(pk=dataset.pk).get()  # the latest version stays the latest
        latest = dataset.versions.order_by("-number").first()
        kept = [
            Example(e.line, e.record, e.tokens, e.sha256)
            for e in (latest.examples.order_by("index") if latest else DatasetExample.objects.none())
        ]
        combined = dataset_from_examples(kind=dataset.kind, examples=kept + list(new.examples))
        return dataset_version_create(
            owner=dataset.owner,
            kind=dataset.kind,
            name=dataset.name,
            parsed=combined,
            source=source,
            source_detail=source_detail,
            created_by=created_by,
            dataset=dataset,
        )


def _exchange(answer: Message) -> list[dict]:
    """The conversation up to and including `answer`, opened by the instructions it was answered under when the
    curator owns the assistant (another owner's instructions are theirs: a public assistant's user never sees
    them, so their example has none)."""
    conversation = answer.conversation
    turns = [{"role": m.role, "content": m.content} for m in message_ancestors(message=answer)]
    if conversation.assistant.owner_id != conversation.owner_id:
        return turns
    user_name = conversation.owner.get_username()
    system = instructions_render(text=answer.assistant_version.instructions, user_name=user_name)
    return [{"role": "system", "content": system}, *turns]


def _curate(*, owner, name: str, kind: str, records: list[dict], detail: str) -> DatasetVersion:
    with transaction.atomic():  # a dataset made for examples that are then refused is not kept
        dataset = _dataset_for(owner=owner, name=_name_clean(name), kind=kind)
        return dataset_examples_add(
            dataset=dataset, examples=records, source=DatasetSource.CHATS, source_detail=detail, created_by=owner
        )


def answer_mark_good(*, answer: Message, dataset_name: str) -> DatasetVersion:
    """Add the exchange up to `answer` as a conversation (SFT) example to its owner's dataset `dataset_name`."""
    return _curate(
        owner=answer.conversation.owner,
        name=dataset_name,
        kind=DatasetKind.SFT,
        records=[{"messages": _exchange(answer)}],
        detail=f"Marked good: answer {answer.pk}",
    )


def answer_edit_ideal(
    *, answer: Message, content: str, dataset_name: str, preference_dataset_name: str
) -> tuple[DatasetVersion, DatasetVersion]:
    """Add the exchange with `content` as the answer to the SFT dataset, and (`content` above the original) to the
    preference dataset; both or neither."""
    content = content.replace("\r\n", "\n").strip()  # as a browser's textarea sends it
    if unicode_clean(content).text.strip() == unicode_clean(answer.content).text.strip():
        raise DatasetError("The edited answer is the same as the original; use “Mark good” to keep it as it is.")
    *prompt, _original = _exchange(answer)
    owner, detail = answer.conversation.owner, f"Edited: answer {answer.pk}"
    ideal = {"role": "assistant", "content": content}
    with transaction.atomic():
        sft = _curate(
            owner=owner,
            name=dataset_name,
            kind=DatasetKind.SFT,
            records=[{"messages": [*prompt, ideal]}],
            detail=detail,
        )
        pair = {"prompt": prompt, "chosen": [ideal], "rejected": [{"role": "assistant", "content": answer.content}]}
        preference = _curate(
            owner=owner, name=preference_dataset_name, kind=DatasetKind.PREFERENCE, records=[pair], detail=detail
        )
    return sft, preference


def dataset_import_from_task_set(*, owner, name: str, task_set: TaskSet, split: str) -> DatasetVersion:
    """The labeling panel's consensus pairs of `task_set` (its `split`: train, test or all) as a new version of
    the owner's preference dataset `name`. Admins only: task sets are theirs."""
    if not is_admin(owner):
        raise DatasetError("Only an admin can import a labeling task set.")
    raw = export_jsonl(task_set=task_set, export_format="trl", split=split).encode()
    if not raw:
        raise DatasetError(f"“{task_set.name}” has no consensus pairs in the {split} split yet.")
    parsed = dataset_parse(file=io.BytesIO(raw), kind=DatasetKind.PREFERENCE, count_tokens=_count_tokens())
    return dataset_version_create(
        owner=owner,
        kind=DatasetKind.PREFERENCE,
        name=name,
        parsed=parsed,
        source=DatasetSource.LABELING,
        source_detail=f"Task set “{task_set.name}” (#{task_set.pk}), {split} split",
        created_by=owner,
    )
