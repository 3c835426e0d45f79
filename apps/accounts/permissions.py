"""Server-side access checks for the product's areas. Every area view goes through one of these."""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

from apps.accounts.models import Role

AREA_ROLES: dict[str, tuple[Role, ...]] = {
    "member": (Role.MEMBER, Role.LABELER, Role.ADMIN),
    "labeler": (Role.LABELER, Role.ADMIN),
    "admin": (Role.ADMIN,),
}


def role_check(*, user, area: str) -> None:
    """Raise PermissionDenied (a 403 page) unless the signed-in user's role opens this area."""
    if not user.is_authenticated or user.role not in AREA_ROLES[area]:
        raise PermissionDenied(f"This area needs the {area} role.")


def role_required(area: str) -> Callable:
    """View decorator: anonymous people are sent to log in; others need the area's role."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            role_check(user=request.user, area=area)
            return view(request, *args, **kwargs)

        return login_required(wrapped)

    return decorator
