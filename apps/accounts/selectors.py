"""Reads for accounts: API keys, and the one place that turns a presented key into a user."""

import hashlib
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.accounts.models import ApiKey, User

LAST_USED_RESOLUTION = timedelta(minutes=1)  # how stale `last_used_at` may be: no write on every request


def api_key_hash(*, raw_key: str) -> str:
    """The stored form of a key: SHA-256 hex (keys are high-entropy random, so a fast hash is enough)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    """The user's keys, newest first, revoked ones included (they stay listed as revoked)."""
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-pk")


def api_key_authenticate(*, raw_key: str) -> User | None:
    """The active user a live key belongs to, else None. Notes the use, at most once a minute."""
    if not raw_key:
        return None
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(hashed_key=api_key_hash(raw_key=raw_key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests write once; a plain read is not worth a lock.
        ApiKey.objects.filter(pk=api_key.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
    return api_key.user


def user_get_by_username(*, username: str) -> User | None:
    return User.objects.filter(username=username).first()
