"""Writes for accounts. Views and commands call these; they hold the rules."""

import secrets

from django.db import transaction

from apps.accounts.models import Role, User


class AccountError(Exception):
    """A domain error with a message fit for the person who caused it."""


@transaction.atomic
def user_create(*, username: str, email: str, password: str) -> User:
    if User.objects.filter(username__iexact=username).exists():
        raise AccountError(f"The username {username!r} is taken.")
    return User.objects.create_user(username=username, email=email, password=password, role=Role.MEMBER)


@transaction.atomic
def user_set_role(*, user: User, role: Role) -> User:
    user.role = role
    user.save(update_fields=["role"])
    return user


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
