from django.db.models import QuerySet

from apps.registry.catalog import SMOLLM2_Q4
from apps.registry.models import BaseModel


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.all()


def base_model_get_ready(*, kind: str) -> BaseModel | None:
    """The model of a kind to serve: the variant the inference server runs (the perplexity-gated q4 for
    chat), else whatever of that kind is ready."""
    ready = BaseModel.objects.filter(kind=kind, status=BaseModel.Status.READY).order_by("name", "variant")
    return ready.filter(variant=SMOLLM2_Q4.variant).first() or ready.first()


def base_models_health() -> str:
    """`ok` when a chat and an embedding model are ready; otherwise what is missing or failed."""
    problems = []
    for kind in BaseModel.Kind.values:
        if base_model_get_ready(kind=kind) is None:
            failed = BaseModel.objects.filter(kind=kind, status=BaseModel.Status.FAILED).first()
            problems.append(f"{kind}: {failed.error[:200]}" if failed else f"no {kind} model ready")
    return "; ".join(problems) or "ok"
