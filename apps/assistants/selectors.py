"""Reads for assistants, and the one place that decides who may see, edit or chat with one."""

import hmac

from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.assistants.models import Assistant, CanaryIncident, Visibility
from apps.registry.models import BaseModel
from apps.registry.selectors import base_model_get_ready


def _with_version(queryset: QuerySet[Assistant]) -> QuerySet[Assistant]:
    return queryset.select_related("current_version", "owner")


def assistant_list_owned(*, user) -> QuerySet[Assistant]:
    return _with_version(Assistant.objects.filter(owner=user))


def gallery_list(*, query: str = "") -> QuerySet[Assistant]:
    """Public, listed assistants, searched by name, description and address."""
    assistants = Assistant.objects.filter(visibility=Visibility.PUBLIC, unlisted=False)
    if query.strip():
        words = query.split()[:8]
        for word in words:
            assistants = assistants.filter(
                Q(current_version__name__icontains=word)
                | Q(current_version__description__icontains=word)
                | Q(slug__icontains=word)
            )
    return _with_version(assistants).order_by("-updated_at")


def can_edit(*, user, assistant: Assistant) -> bool:
    return user.is_authenticated and assistant.owner_id == user.pk


def can_chat(*, user, assistant: Assistant) -> bool:
    """Without a share link: the owner, or anyone signed in for a listed public assistant."""
    return can_edit(user=user, assistant=assistant) or (user.is_authenticated and assistant.listed)


def share_link_valid(*, assistant: Assistant, token: str) -> bool:
    if assistant.visibility == Visibility.PRIVATE or not assistant.share_token or not token:
        return False
    if assistant.share_expires_at is not None and assistant.share_expires_at <= timezone.now():
        return False
    return hmac.compare_digest(assistant.share_token, token)


def assistant_get_by_share_token(*, token: str) -> Assistant | None:
    assistant = _with_version(Assistant.objects.filter(share_token=token)).first() if token else None
    return assistant if assistant and share_link_valid(assistant=assistant, token=token) else None


def assistant_usable_list(*, user) -> QuerySet[Assistant]:
    """What a user may chat with by slug (the API's models): their own and the listed public ones."""
    return _with_version(
        Assistant.objects.filter(Q(owner=user) | Q(visibility=Visibility.PUBLIC, unlisted=False))
    ).filter(current_version__isnull=False)


def chat_model_choices() -> QuerySet[BaseModel]:
    return BaseModel.objects.filter(kind=BaseModel.Kind.CHAT, status=BaseModel.Status.READY)


def chat_model_default() -> BaseModel | None:
    return base_model_get_ready(kind=BaseModel.Kind.CHAT)


def canary_incident_list(*, assistant: Assistant, limit: int = 20) -> QuerySet[CanaryIncident]:
    """The newest answers withheld for writing the canary, for the owner's edit page."""
    return CanaryIncident.objects.filter(version__assistant=assistant).select_related("version")[:limit]
