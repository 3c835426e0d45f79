"""Fine-tune jobs' test objects: a registered base model that is the tiny chat model, and dataset versions made
straight from `dataset_parse` output (the datasets service is another area's)."""

import io
import json
from pathlib import Path

from apps.finetune.datasets import chat_token_counter, dataset_parse
from apps.finetune.models import Dataset, DatasetExample, DatasetSource, DatasetVersion
from apps.registry.models import BaseModel


def make_base_model(root: Path, *, name: str = "tiny-chat", variant: str = "fp32") -> BaseModel:
    """A ready chat model row whose folder (root) keeps the Hugging Face checkpoint in root/hf, as the
    registry's fp32 build does."""
    return BaseModel.objects.create(
        name=name,
        variant=variant,
        kind=BaseModel.Kind.CHAT,
        status=BaseModel.Status.READY,
        content_hash=f"{name}-{variant}".ljust(64, "0")[:64],
        path=str(root),
        perplexity=10.0,
        source_package="tests",
    )


def make_dataset_version(owner, *, records: list[dict], kind: str = "sft", hf_dir: Path, name: str = "data"):
    """Dataset v1 with `records`, validated by dataset_parse against the model's own chat template."""
    raw = "\n".join(json.dumps(r) for r in records).encode()
    parsed = dataset_parse(file=io.BytesIO(raw), kind=kind, count_tokens=chat_token_counter(tokenizer_dir=hf_dir))
    dataset, _ = Dataset.objects.get_or_create(owner=owner, name=name, defaults={"kind": kind})
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=dataset.versions.count() + 1,
        source=DatasetSource.UPLOAD,
        source_detail=f"{name}.jsonl",
        created_by=owner,
        sha256=parsed.sha256,
        example_count=len(parsed.examples),
        token_count=parsed.tokens,
        seconds_per_epoch=parsed.seconds_per_epoch,
    )
    DatasetExample.objects.bulk_create(
        DatasetExample(version=version, index=i, line=e.line, record=e.record, tokens=e.tokens, sha256=e.sha256)
        for i, e in enumerate(parsed.examples)
    )
    return version
