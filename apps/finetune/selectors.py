"""Reads for fine-tuning, and the one place that decides who may see an adapter: its owner, nobody else
(another user's adapter is None here, which views turn into a 404, so ids cannot be probed)."""

from pathlib import Path

from django.db.models import QuerySet

from apps.assistants.models import AssistantVersion
from apps.finetune.models import Adapter, Evaluation
from apps.registry.models import BaseModel

# --- adapters ------------------------------------------------------------------------------------------


def base_model_training_dir(*, base_model: BaseModel) -> Path | None:
    """The Hugging Face folder (config.json, safetensors, tokenizer) of a base model: what the trainer, the
    evaluation and an upload's shape check read. A quantized variant has none of its own; the same model's
    other variants (the fp32 reference is built from that folder) share theirs."""
    same_model = BaseModel.objects.filter(name=base_model.name).exclude(pk=base_model.pk).order_by("variant")
    for candidate in [base_model, *same_model]:
        hf_dir = Path(candidate.path) / "hf" if candidate.path else None
        if hf_dir is not None and (hf_dir / "config.json").is_file():
            return hf_dir
    return None


def adapter_list_owned(*, user) -> QuerySet[Adapter]:
    if not user.is_authenticated:
        return Adapter.objects.none()
    return Adapter.objects.filter(owner=user).select_related("base_model", "dataset_version__dataset", "job")


def adapter_get_owned(*, user, adapter_id: int) -> Adapter | None:
    return adapter_list_owned(user=user).filter(pk=adapter_id).first()


def adapter_newest_version(*, adapter: Adapter) -> AssistantVersion | None:
    """The newest assistant version that uses the adapter (on its owner's assistants: no one else's can)."""
    return (
        AssistantVersion.objects.filter(adapter=adapter, assistant__owner_id=adapter.owner_id)
        .select_related("assistant")
        .order_by("-created_at", "-pk")
        .first()
    )


def evaluation_latest(*, adapter: Adapter) -> Evaluation | None:
    return adapter.evaluations.order_by("-created_at", "-pk").first()


# --- end adapters ---
