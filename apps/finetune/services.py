"""Writes for fine-tuning. Each area has its own section: datasets, jobs, adapters.

Adapters (trained by a job, or uploaded) are their owner's alone: only the owner's assistants may use one
(`adapter_attach` makes the assistant's next version with it), only the owner sees it, and every service
here that takes an adapter checks the actor owns it, so a view that forgot to would still refuse.
"""

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

import dataclasses
import hashlib
import json
import random
import secrets
import shutil
import struct
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.arena.models import Battle, Mode
from apps.arena.services import ArenaError, battle_start
from apps.assistants.models import Assistant, AssistantVersion
from apps.assistants.services import AssistantError, assistant_config_of, assistant_update
from apps.core.unicode import unicode_clean
from apps.finetune import measures
from apps.finetune.models import Adapter, AdapterSource, Evaluation, EvaluationStatus
from apps.finetune.selectors import adapter_newest_version, base_model_training_dir
from apps.finetune.tasks import evaluation_run_task
from apps.registry.models import BaseModel
from inference.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_peft_adapter
from inference.adapters import AdapterError as PeftAdapterInvalid
from inference.config import DecoderConfig

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


def _engine_id(name: str) -> str:
    """A new slug the engine knows the adapter by; random, so it says nothing about other adapters."""
    return f"ft-{slugify(name)[:40] or 'adapter'}-{secrets.token_hex(4)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    root = Path(settings.FINETUNE_ADAPTERS_DIR)
    staging = root / ".staging" / secrets.token_hex(8)
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
        sha256 = _sha256(staging / ADAPTER_WEIGHTS)
        engine_id = _engine_id(name)
        final = root / engine_id
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
