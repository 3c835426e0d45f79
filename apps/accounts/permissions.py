"""Server-side access checks for the product's areas: every area view calls role_check (directly, or through
member_required)."""

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


def member_required(view):
    """A view decorator: signed in (else the login page), with a role that opens the member areas (else 403)."""

    @login_required
    @wraps(view)
    def checked(request, *args, **kwargs):
        role_check(user=request.user, area="member")
        return view(request, *args, **kwargs)

    return checked
