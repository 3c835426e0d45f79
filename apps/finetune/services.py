"""Writes for fine-tuning. Datasets: every way of building one ends in `dataset_version_create`.

- `dataset_version_create` is the one writer of versions: it scans the examples for poisoning
  (`scan.dataset_scan`), numbers the version under the dataset's row lock (two writers never get one number)
  and stores every example with its source line, tokens and sha256. A version is never changed afterwards,
  except for an admin's override of its high-severity findings (`dataset_version_override`, with a reason).
- `dataset_upload`: a JSONL file, all or nothing. An Anthropic HH preference file is converted to TRL's format
  first (`formats.py`); a file with any problem imports nothing and raises `DatasetInvalid` with every problem
  and its line. Tokens are counted with the tokenizer and chat template of the model a job trains by default
  (the served chat model's Hugging Face folder, `base_model_training_dir`).
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

Adapters (trained by a job, or uploaded) are their owner's alone: only the owner's assistants may use one
(`adapter_attach` makes the assistant's next version with it), only the owner sees it, and every service
in the adapters section checks the actor owns the adapter, so a view that forgot to would still refuse.

Jobs: `finetune_job_create` checks what the owner asked for (a trainable version they own, the method its kind
trains, a starting adapter of theirs), fills the settings the person did not choose with defaults suited to the
data's size, and queues the job on the `finetune` queue once the transaction commits. `finetune_job_cancel` ends
a queued job at once and asks a running one to stop between two steps; `finetune_job_retry` queues a failed or
cancelled job again, which resumes from its last checkpoint. The task body (`finetune_job_run`) and beat's sweep
(`finetune_jobs_fail_stale`) live in apps/finetune/jobs.py, beside the rest of the runner, exported from here.
"""

import dataclasses
import io
import json
import math
import random
import secrets
import shutil
import struct
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.arena.models import Battle, Mode
from apps.arena.services import ArenaError, battle_start
from apps.assistants.engine import instructions_render
from apps.assistants.models import Assistant, AssistantVersion
from apps.assistants.services import AssistantError, assistant_config_of, assistant_update
from apps.chat.models import Message
from apps.chat.selectors import message_ancestors
from apps.core.unicode import unicode_clean
from apps.finetune import datasets
from apps.finetune.datasets import DatasetInvalid, Example, Problem, dataset_from_examples, dataset_parse
from apps.finetune.formats import preference_file_convert
from apps.finetune.jobs import (  # noqa: F401 (the task body and beat's sweep, exported as services)
    CANCELLED_QUEUED,
    adapter_engine_id_new,
    adapters_dir,
    finetune_job_run,
    finetune_jobs_fail_stale,
    training_settings_to_dict,
)
from apps.finetune.models import (
    Adapter,
    AdapterSource,
    Dataset,
    DatasetExample,
    DatasetKind,
    DatasetSource,
    DatasetVersion,
    Evaluation,
    EvaluationStatus,
    FineTuneJob,
    JobLogLine,
    JobStatus,
    Method,
)
from apps.finetune.scan import dataset_scan
from apps.finetune.selectors import adapter_newest_version, base_model_training_dir, is_admin
from apps.finetune.tasks import evaluation_run_task, finetune_job_run_task
from apps.finetune.training_settings import DPO_DEFAULTS, SFT_DEFAULTS, TrainingSettings
from apps.labeling.models import TaskSet
from apps.labeling.selectors import export_jsonl
from apps.registry.models import BaseModel
from apps.registry.selectors import base_model_get_ready
from inference.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_peft_adapter
from inference.adapters import AdapterError as PeftAdapterInvalid
from inference.config import DecoderConfig
from inference.export import sha256_file


class DatasetError(Exception):
    """A refusal a person can act on; the message says what to do."""


@lru_cache(maxsize=2)
def _token_counter(tokenizer_dir: Path) -> Callable[[list[dict]], int]:
    return datasets.chat_token_counter(tokenizer_dir=tokenizer_dir)


def _count_tokens() -> Callable[[list[dict]], int]:
    """Counts with the tokenizer and chat template of the model a job trains unless told otherwise (the served
    chat model's training folder)."""
    base_model = base_model_get_ready(kind=BaseModel.Kind.CHAT)
    tokenizer_dir = base_model_training_dir(base_model=base_model) if base_model is not None else None
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


# --- adapters ------------------------------------------------------------------------------------------
#
# Upload: safetensors only. A pickle (PyTorch's .bin/.pt, a zip of pickles since torch 1.6) runs code when
# it is loaded, so the file is recognised by its bytes, not its name: a safetensors file is an 8-byte
# little-endian header length, a JSON header of tensors whose byte ranges tile the rest of the file, and
# nothing else. Then the engine's own reader (inference/adapters.py: read_peft_adapter) checks the
# modules, layers and shapes against the base model's config, so what is stored is what the engine loads.
# The files are written to a staging folder and renamed into FINETUNE_ADAPTERS_DIR/<engine_id> whole.
#
# Evaluation: a trained adapter against its base model. The page only queues it (`evaluation_start`);
# apps/finetune/evaluation.py does the work on the `finetune` queue and stores every result in an
# Evaluation row, with its progress, so the page can follow and survives reloads.

ADAPTER_CONFIG_MAX_BYTES = 64 * 1024
SAFETENSORS_HEADER_MAX_BYTES = 16 * 1024 * 1024
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
ARENA_DEFAULT_PROMPT = "Introduce yourself and say what you can help with."


class AdapterError(Exception):
    """A domain error about an adapter, with a message fit for the person who caused it."""


def _require_owner(*, adapter: Adapter, actor) -> None:
    # Worded as a miss: whether someone else's adapter exists is not told.
    if not actor.is_authenticated or adapter.owner_id != actor.pk:
        raise AdapterError("No such fine-tune.")


def _safetensors_problem(head: bytes, size: int) -> str | None:
    """Why the file whose first bytes are `head` (at least 8 + its header) and size is `size` is not a
    safetensors file, or None."""
    if head[:2] == b"PK":
        return "it is a zip archive (PyTorch's torch.save format, which holds pickles)"
    if head[:1] == b"\x80":  # the PROTO opcode every pickle since protocol 2 starts with
        return "it is a Python pickle (a PyTorch .bin or .pt file)"
    if size < 8:
        return "it is too short"
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= min(SAFETENSORS_HEADER_MAX_BYTES, size - 8):
        return "its header length is impossible"
    try:
        header = json.loads(head[8 : 8 + length])
    except (UnicodeDecodeError, ValueError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            return f"tensor {name[:80]!r} is not described by dtype, shape and data_offsets"
        shape, offsets, width = entry["shape"], entry["data_offsets"], SAFETENSORS_DTYPE_BYTES.get(entry["dtype"])
        if width is None or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            return f"tensor {name[:80]!r} has an unknown dtype or a bad shape"
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name[:80]!r} has bad data offsets"
        count = 1
        for dimension in shape:
            count *= dimension
        if offsets[1] - offsets[0] != count * width or offsets[0] < 0:
            return f"tensor {name[:80]!r} does not match its byte range"
        ends.append(tuple(offsets))
    covered = 0
    for start, end in sorted(ends):  # the tensors tile the data area, no gap, no overlap
        if start != covered:
            return "its tensors' byte ranges leave gaps or overlap"
        covered = end
    if covered != size - 8 - length:
        return "its size does not match its tensors (trailing or missing bytes)"
    return None


def _read_head(upload, size: int) -> bytes:
    upload.seek(0)
    first = upload.read(8)
    length = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
    rest = upload.read(min(length, SAFETENSORS_HEADER_MAX_BYTES, max(size - 8, 0))) if length else upload.read(64)
    upload.seek(0)
    return first + rest


def _adapter_config_parse(config_file) -> dict:
    if config_file.size > ADAPTER_CONFIG_MAX_BYTES:
        raise AdapterError(f"{ADAPTER_CONFIG} is over {ADAPTER_CONFIG_MAX_BYTES // 1024} KB; it should be a few lines.")
    try:
        config = json.loads(config_file.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise AdapterError(f"{ADAPTER_CONFIG} is not JSON: {error}") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA" or "r" not in config:
        raise AdapterError(f"{ADAPTER_CONFIG} is not a PEFT LoRA config (it needs peft_type LORA and r).")
    return config


def adapter_upload(*, owner, name: str, base_model: BaseModel, weights_file, config_file) -> Adapter:
    """A LoRA adapter from outside: `weights_file` (adapter_model.safetensors) and `config_file`
    (adapter_config.json), validated against `base_model`, stored and recorded as the owner's."""
    name = unicode_clean(name, source="adapter name").text.strip()
    if not name:
        raise AdapterError("Give the fine-tune a name.")
    if Adapter.objects.filter(owner=owner, name=name).exists():
        raise AdapterError(f"You already have a fine-tune called {name!r}.")
    if base_model.kind != BaseModel.Kind.CHAT or not base_model.ready:
        raise AdapterError(f"{base_model} is not a ready chat model.")
    limit = settings.FINETUNE_ADAPTER_MAX_MB * 1024 * 1024
    if weights_file.size > limit:
        raise AdapterError(f"The weights are {weights_file.size / 2**20:.0f} MB; the limit is {limit // 2**20} MB.")
    problem = _safetensors_problem(_read_head(weights_file, weights_file.size), weights_file.size)
    if problem:
        raise AdapterError(
            f"The weights file is not safetensors: {problem}. Only safetensors are accepted, because a pickle "
            "can run code when it is loaded; save the adapter with save_pretrained(..., safe_serialization=True)."
        )
    config = _adapter_config_parse(config_file)
    hf_dir = base_model_training_dir(base_model=base_model)
    if hf_dir is None:
        raise AdapterError(f"The shape of {base_model} is unknown here, so the adapter cannot be checked against it.")

    staging = adapters_dir() / ".staging" / secrets.token_hex(8)
    staging.mkdir(parents=True)
    try:
        with (staging / ADAPTER_WEIGHTS).open("wb") as out:
            for chunk in weights_file.chunks():
                out.write(chunk)
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        try:
            read_peft_adapter(staging, DecoderConfig.from_hf(hf_dir), max_rank=settings.FINETUNE_ADAPTER_MAX_RANK)
        except PeftAdapterInvalid as error:
            raise AdapterError(f"The adapter does not fit {base_model}: {error}.") from None
        sha256 = sha256_file(staging / ADAPTER_WEIGHTS)
        engine_id = adapter_engine_id_new(name=name)
        final = adapters_dir() / engine_id
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        return Adapter.objects.create(
            owner=owner,
            name=name,
            source=AdapterSource.UPLOADED,
            base_model=base_model,
            base_model_hash=base_model.content_hash,
            engine_id=engine_id,
            path=str(final),
            sha256=sha256,
            config=config,
        )
    except IntegrityError:
        shutil.rmtree(final, ignore_errors=True)
        raise AdapterError(f"You already have a fine-tune called {name!r}.") from None


def adapter_attach(*, assistant: Assistant, adapter: Adapter, actor) -> AssistantVersion:
    """The assistant's next version: its current one with this adapter. Only for the adapter's owner, on
    their own assistant, with the base model the adapter was made for."""
    _require_owner(adapter=adapter, actor=actor)
    if assistant.owner_id != actor.pk:
        raise AdapterError("You can only attach a fine-tune to your own assistants.")
    current = assistant.current_version
    if current is None:
        raise AdapterError("The assistant has no version to build on.")
    if current.adapter_id == adapter.pk:
        raise AdapterError(f"{assistant.name} already uses {adapter.name} (version {current.number}).")
    if current.base_model_id != adapter.base_model_id:
        raise AdapterError(
            f"{adapter.name} was made for {adapter.base_model}; {assistant.name} runs on {current.base_model}."
        )
    config = dataclasses.replace(assistant_config_of(version=current), adapter=adapter)
    try:
        return assistant_update(assistant=assistant, actor=actor, config=config, visibility=assistant.visibility)
    except AssistantError as error:
        raise AdapterError(str(error)) from error


def _arena_prompt(adapter: Adapter) -> str:
    """A prompt the fine-tune was made for: the evaluation's first held-out prompt, else the dataset's first."""
    latest = adapter.evaluations.filter(status=EvaluationStatus.DONE).first()
    if latest is not None and latest.answers:
        return latest.answers[0]["prompt"][-1]["content"]
    if adapter.dataset_version_id is not None:
        from apps.finetune import measures  # torch, which the web app never needs otherwise

        first = adapter.dataset_version.examples.order_by("index").first()
        if first is not None:
            prompt, _ = measures.prompt_and_reference(first.record)
            users = [m["content"] for m in prompt if m["role"] == "user"]
            if users:
                return users[-1]
    return ARENA_DEFAULT_PROMPT


def adapter_arena_enter(*, adapter: Adapter, actor, rng: random.Random | None = None) -> Battle:
    """A battle in the owner's own arena: the newest version with this adapter against the version before it,
    on a prompt the fine-tune was made for, sides in random order so the vote stays blind. It is a named
    battle (the arena stores and shows it, and does not rate it: the owner picked both sides)."""
    _require_owner(adapter=adapter, actor=actor)
    version = adapter_newest_version(adapter=adapter)
    if version is None:
        raise AdapterError("Attach the fine-tune to one of your assistants first.")
    previous = version.assistant.versions.filter(number__lt=version.number).order_by("-number").first()
    if previous is None:
        raise AdapterError(f"{version.assistant.name} has no earlier version to compare with.")
    pair = [version, previous]
    (rng or random.SystemRandom()).shuffle(pair)
    try:
        return battle_start(
            user=actor, mode=Mode.PERSONAL, prompt=_arena_prompt(adapter), version_a=pair[0], version_b=pair[1]
        )
    except ArenaError as error:
        raise AdapterError(str(error)) from error


# --- adapters: evaluation ---


def evaluation_start(*, adapter: Adapter, actor) -> Evaluation:
    """Queue an evaluation of a trained adapter (or return the one already queued or running)."""
    _require_owner(adapter=adapter, actor=actor)
    if adapter.dataset_version_id is None:
        raise AdapterError("Only a fine-tune trained here can be evaluated: it needs the dataset it learnt from.")
    with transaction.atomic():
        Adapter.objects.select_for_update().get(pk=adapter.pk)  # one start at a time per adapter
        running = adapter.evaluations.filter(status__in=[EvaluationStatus.QUEUED, EvaluationStatus.RUNNING]).first()
        stale_before = timezone.now() - timedelta(seconds=settings.FINETUNE_EVALUATION_STALE_SECONDS)
        if running is not None and running.updated_at >= stale_before:
            return running
        if running is not None:  # its worker died and the queue lost it: give it up, so a new one can start
            running.status, running.finished_at = EvaluationStatus.FAILED, timezone.now()
            running.message = "Its worker stopped answering; it was given up when a new evaluation was asked for."
            running.save(update_fields=["status", "finished_at", "message", "updated_at"])
        evaluation = Evaluation.objects.create(adapter=adapter, requested_by=actor, progress_message="Queued")
        transaction.on_commit(lambda: evaluation_run_task.delay(evaluation.pk))
    return evaluation


# --- end adapters ---


# --- jobs ------------------------------------------------------------------------------------------------


class FineTuneJobError(Exception):
    """A refused job action; str(error) is written for the person who asked."""


METHOD_FOR_KIND = {DatasetKind.SFT: Method.SFT, DatasetKind.PREFERENCE: Method.DPO}
# What the Train form's advanced section may set; everything else keeps the method's defaults.
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules")
TRAINING_KEYS = ("learning_rate", "epochs", "batch_size", "max_length", "seed")
SETTING_KEYS = LORA_KEYS + TRAINING_KEYS
SMALL_DATASET = 100  # examples: below it one more epoch, since each epoch is only a few steps
CHECKPOINTS_PER_RUN = 4  # at least, so a killed small job still resumes part-way


def training_settings_default(*, method: str, examples: int) -> TrainingSettings:
    """The method's defaults (training_settings.py) fitted to the data: a batch no larger than the training split,
    an extra epoch for a small set, and checkpoints often enough that a short run has some to resume from."""
    defaults = SFT_DEFAULTS if method == Method.SFT else DPO_DEFAULTS
    epochs = defaults.epochs + (1 if examples < SMALL_DATASET else 0)
    batch_size = max(1, min(defaults.batch_size, examples))
    steps = math.ceil(examples / batch_size) * epochs
    checkpoint_every = max(1, min(defaults.checkpoint_every, steps // CHECKPOINTS_PER_RUN))
    return replace(defaults, epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every)


def _settings_build(*, method: str, examples: int, chosen: dict) -> TrainingSettings:
    unknown = set(chosen) - set(SETTING_KEYS)
    if unknown:
        raise FineTuneJobError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
    base = training_settings_default(method=method, examples=examples)
    lora = {key: chosen[key] for key in LORA_KEYS if chosen.get(key) not in (None, "", [])}
    if "target_modules" in lora:
        lora["target_modules"] = tuple(lora["target_modules"])
    training = {key: chosen[key] for key in TRAINING_KEYS if chosen.get(key) not in (None, "")}
    try:
        return replace(base, lora=replace(base.lora, **lora), **training)
    except (TypeError, ValueError) as error:
        raise FineTuneJobError(f"Invalid training settings: {error}") from error


def finetune_job_create(
    *,
    owner,
    dataset_version: DatasetVersion,
    method: str,
    settings: dict | None = None,
    start_adapter: Adapter | None = None,
    assistant=None,
) -> FineTuneJob:
    """A queued job training `dataset_version` with `method` ("sft" or "dpo"). `settings` may set the keys
    of SETTING_KEYS; the rest are `training_settings_default`'s. DPO may start from (and refer to) one of
    the owner's SFT adapters. The base model is the assistant's, else the starting adapter's, else the one
    the engine serves. Raises FineTuneJobError, with the reason, for anything it refuses."""
    version = DatasetVersion.objects.select_related("dataset").get(pk=dataset_version.pk)
    if version.dataset.owner_id != owner.pk:
        raise FineTuneJobError("You can only train on your own datasets.")
    if not version.trainable:
        raise FineTuneJobError(
            f"{version} has {version.high_findings} high-severity finding(s) from the poisoning scan; it trains "
            "only once an admin overrides them with a written reason."
        )
    if method not in Method.values:
        raise FineTuneJobError(f"Unknown method {method!r}; choose one of {', '.join(Method.values)}.")
    if METHOD_FOR_KIND[version.dataset.kind] != method:
        raise FineTuneJobError(
            f"A {version.dataset.get_kind_display()} dataset trains with "
            f"{Method(METHOD_FOR_KIND[version.dataset.kind]).label}, not {Method(method).label}."
        )
    if start_adapter is not None:
        if start_adapter.owner_id != owner.pk:
            raise FineTuneJobError("You can only start from your own adapters.")
        if method != Method.DPO:
            raise FineTuneJobError("Only a preference (DPO) job starts from an adapter.")
    if assistant is not None and assistant.owner_id != owner.pk:
        raise FineTuneJobError("You can only fine-tune your own assistants.")
    if assistant is not None and assistant.current_version_id:
        base_model = assistant.current_version.base_model
    elif start_adapter is not None:
        base_model = start_adapter.base_model
    else:
        base_model = base_model_get_ready(kind=BaseModel.Kind.CHAT)
    if base_model is None or not base_model.ready:
        raise FineTuneJobError("No chat model is ready to fine-tune yet.")
    if start_adapter is not None and start_adapter.base_model_id != base_model.pk:
        raise FineTuneJobError(f"The adapter {start_adapter} was trained on another base model.")
    if base_model_training_dir(base_model=base_model) is None:
        raise FineTuneJobError(f"{base_model} has no trainable weights on this machine.")
    chosen = _settings_build(method=method, examples=version.example_count, chosen=settings or {})
    with transaction.atomic():
        job = FineTuneJob.objects.create(
            owner=owner,
            assistant=assistant,
            dataset_version=version,
            method=method,
            base_model=base_model,
            start_adapter=start_adapter,
            settings=training_settings_to_dict(chosen),
            heartbeat_at=timezone.now(),  # queued since (beat's lost-message check)
        )
        JobLogLine.objects.create(job=job, message=f"Queued: {method.upper()} on {version}, base model {base_model}.")
        _enqueue(job)
    return job


def finetune_job_cancel(*, job: FineTuneJob) -> FineTuneJob:
    """A queued job is cancelled at once; a running one between two steps (its worker reads the flag)."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
        if job.status == JobStatus.QUEUED:
            job.status, job.finished_at, job.message = JobStatus.CANCELLED, timezone.now(), CANCELLED_QUEUED
        elif job.status == JobStatus.RUNNING:
            job.cancel_requested = True
        else:
            raise FineTuneJobError("Only a queued or running job can be cancelled.")
        job.save(update_fields=["status", "finished_at", "message", "cancel_requested"])
        JobLogLine.objects.create(job=job, message="Cancel requested.")
    return job


def finetune_job_retry(*, job: FineTuneJob) -> FineTuneJob:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint, with its metric points kept."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise FineTuneJobError("Only a failed or cancelled job can be retried.")
        job.status, job.message, job.cancel_requested = JobStatus.QUEUED, "", False
        job.finished_at, job.heartbeat_at = None, timezone.now()
        job.save(update_fields=["status", "message", "cancel_requested", "finished_at", "heartbeat_at"])
        JobLogLine.objects.create(job=job, message="Queued again: it resumes from its last checkpoint.")
        _enqueue(job)
    return job


def _enqueue(job: FineTuneJob) -> None:
    job_id = job.pk
    transaction.on_commit(lambda: finetune_job_run_task.delay(job_id))


# --- end jobs --------------------------------------------------------------------------------------------
