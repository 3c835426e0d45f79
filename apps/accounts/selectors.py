"""Reads for accounts: API keys and users."""

import hashlib

from django.db.models import QuerySet

from apps.accounts.models import ApiKey, User


def api_key_hash(*, raw_key: str) -> str:
    """The stored form of a key: SHA-256 hex (keys are high-entropy random, so a fast hash is enough)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    """The user's keys, newest first, revoked ones included (they stay listed as revoked)."""
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-pk")


def user_get_by_username(*, username: str) -> User | None:
    return User.objects.filter(username=username).first()
