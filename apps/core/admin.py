"""What every app's admin shares. Records that services own (immutable versions, votes, rankings, audit
rows) are shown in the admin and never added, changed or deleted there: their services keep the invariants."""


class ReadOnlyAdminMixin:
    """Mix into a ModelAdmin or an inline, before it: the admin shows the rows, nothing more."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
