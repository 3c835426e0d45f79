"""Server-side access checks for the product's areas: every area view calls role_check."""

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
