"""Writes for accounts. Views and commands call these; they hold the rules."""

import secrets
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import ApiKey, Role, User
from apps.accounts.selectors import api_key_hash

API_KEY_PREFIX = "atl_"
API_KEY_SHOWN_CHARS = 12  # stored in clear as `prefix`, to recognise a key by
API_KEY_NAME_MAX = 80
MAX_ACTIVE_API_KEYS = 20


class AccountError(Exception):
    """A domain error with a message fit for the person who caused it."""


@transaction.atomic
def user_create(*, username: str, email: str, password: str) -> User:
    if User.objects.filter(username__iexact=username).exists():
        raise AccountError(f"The username {username!r} is taken.")
    return User.objects.create_user(username=username, email=email, password=password, role=Role.MEMBER)


@transaction.atomic
def admin_ensure(*, username: str, password: str | None) -> tuple[User, str | None]:
    """Make sure an admin account exists.

    Returns the user and the password to print, which is only non-None when one was generated now:
    a generated password is shown once and never stored in clear. A password given through the
    environment always wins, so rotating ATELIER_ADMIN_PASSWORD and restarting rotates the login.
    """
    user = User.objects.filter(username=username).first()
    generated = None
    if user is None:
        generated = None if password else secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password or generated)
        return user, generated
    if user.role != Role.ADMIN or not user.is_superuser:
        user.role, user.is_superuser = Role.ADMIN, True
        user.save(update_fields=["role", "is_superuser"])
    if password and not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    return user, generated


@transaction.atomic
def api_key_create(*, user: User, name: str) -> tuple[ApiKey, str]:
    """Make a key for `user`. Returns the row and the clear key, which is never stored: show it once."""
    name = name.strip()
    if not name:
        raise AccountError("Give the key a name, so you can tell it apart later.")
    if len(name) > API_KEY_NAME_MAX:
        raise AccountError(f"A key's name is at most {API_KEY_NAME_MAX} characters.")
    User.objects.select_for_update().filter(pk=user.pk).first()  # serialise the count below per user
    if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_ACTIVE_API_KEYS:
        raise AccountError(f"You have {MAX_ACTIVE_API_KEYS} active keys already. Revoke one you no longer use.")
    raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user, name=name, prefix=raw_key[:API_KEY_SHOWN_CHARS], hashed_key=api_key_hash(raw_key=raw_key)
    )
    return api_key, raw_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> None:
    """Revoke a key for good; revoking it again keeps the first revocation's time."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])


LAST_USED_RESOLUTION = timedelta(minutes=1)  # how stale `last_used_at` may be: no write on every request


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


def data_sharing_set(*, user: User, allowed: bool) -> None:
    """Whether the labeling panel may sample this person's chat questions as prompts (off by default)."""
    user.data_sharing = allowed
    user.save(update_fields=["data_sharing"])
