"""Reads for the API: which assistants a key's user may call, by slug."""

from django.db.models import QuerySet

from apps.assistants.models import Assistant
from apps.assistants.selectors import assistant_usable_list


def api_model_list(*, user) -> QuerySet[Assistant]:
    return assistant_usable_list(user=user).order_by("slug")


async def api_model_get(*, user, slug: str) -> Assistant | None:
    """The usable assistant `slug` with what a completion needs loaded, or None: whether it does not exist
    or is someone else's private one is deliberately not told apart."""
    if not isinstance(slug, str) or not slug:
        return None
    queryset = assistant_usable_list(user=user).select_related(
        "current_version__base_model", "current_version__adapter"
    )
    return await queryset.filter(slug=slug).afirst()
