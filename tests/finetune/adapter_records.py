"""Adapter rows for the adapter tests, made as a finished training job leaves them (the jobs code makes the
real ones): a dataset version with its examples and scan findings, a succeeded job, and the LoRA trained
by `train_sft` on the tiny model copied into FINETUNE_ADAPTERS_DIR; and PEFT-written adapters to upload."""

import copy
import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile
from peft import LoraConfig, get_peft_model

from apps.finetune.datasets import example_canonical_json
from apps.finetune.jobs import adapter_engine_id_new, adapters_dir
from apps.finetune.models import (
    Adapter,
    AdapterSource,
    Dataset,
    DatasetExample,
    DatasetVersion,
    FineTuneJob,
    JobStatus,
)
from apps.finetune.scan import dataset_scan
from apps.finetune.services import adapter_upload
from apps.finetune.training_settings import TrainingSettings
from apps.registry.models import BaseModel
from inference.adapters import ADAPTER_WEIGHTS
from inference.export import sha256_file


def tiny_base_model(tiny_chat: dict) -> BaseModel:
    """The tiny model registered as a ready chat model under the engine's chat model name (a test server
    serves it under that name)."""
    return BaseModel.objects.create(
        name="smollm2-135m-instruct",
        variant="tiny-test",
        kind=BaseModel.Kind.CHAT,
        status=BaseModel.Status.READY,
        content_hash=hashlib.sha256(b"tiny").hexdigest(),
        path=str(tiny_chat["root"]),
        perplexity=10.0,
        source_package="tests",
    )


def trained_adapter(
    *,
    owner,
    base_model: BaseModel,
    adapter_dir: Path,
    examples: list[dict],
    training: TrainingSettings,
    name: str = "Place guide",
    metrics: dict | None = None,
) -> Adapter:
    findings = dataset_scan(examples=examples)
    dataset = Dataset.objects.create(owner=owner, name=name, kind="sft")
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=1,
        source="upload",
        created_by=owner,
        sha256="0" * 64,
        example_count=len(examples),
        token_count=0,
        seconds_per_epoch=1.0,
        findings=[asdict(f) for f in findings],
        high_findings=sum(f.severity == "high" for f in findings),
    )
    DatasetExample.objects.bulk_create(
        DatasetExample(
            version=version,
            index=i,
            line=i + 1,
            record=example,
            tokens=0,
            sha256=hashlib.sha256(example_canonical_json(example).encode()).hexdigest(),
        )
        for i, example in enumerate(examples)
    )
    job = FineTuneJob.objects.create(
        owner=owner,
        dataset_version=version,
        method="sft",
        base_model=base_model,
        settings=json.loads(json.dumps(asdict(training))),
        status=JobStatus.SUCCEEDED,
    )
    engine_id = adapter_engine_id_new(name=name)
    path = adapters_dir() / engine_id
    shutil.copytree(adapter_dir, path)
    return Adapter.objects.create(
        owner=owner,
        name=name,
        source=AdapterSource.TRAINED,
        base_model=base_model,
        base_model_hash=base_model.content_hash,
        job=job,
        dataset_version=version,
        engine_id=engine_id,
        path=str(path),
        sha256=sha256_file(path / ADAPTER_WEIGHTS),
        config=json.loads((path / "adapter_config.json").read_text()),
        metrics=metrics or {},
    )


def peft_adapter(model, out_dir, *, targets=("q_proj", "v_proj")) -> dict:
    """A LoRA written by PEFT itself (random B, so it changes the model), as save_pretrained leaves it."""
    peft = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    )
    peft.save_pretrained(out_dir, safe_serialization=True)
    return {
        "weights": (out_dir / "adapter_model.safetensors").read_bytes(),
        "config": (out_dir / "adapter_config.json").read_bytes(),
    }


def upload(owner, base, *, weights: bytes, config: bytes, name="Imported"):
    return adapter_upload(
        owner=owner,
        name=name,
        base_model=base,
        weights_file=SimpleUploadedFile("adapter_model.safetensors", weights),
        config_file=SimpleUploadedFile("adapter_config.json", config),
    )
