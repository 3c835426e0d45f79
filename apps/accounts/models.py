from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    MEMBER = "member", "Member"
    LABELER = "labeler", "Labeler"
    ADMIN = "admin", "Admin"


class AtelierUserManager(UserManager):
    def create_superuser(self, username, email=None, password=None, **extra_fields):
        extra_fields.setdefault("role", Role.ADMIN)
        return super().create_superuser(username, email, password, **extra_fields)


class User(AbstractUser):
    """A person. `role` decides which areas they may enter; admins are exactly the staff users."""

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    objects = AtelierUserManager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="user_role_valid"),
            models.CheckConstraint(
                condition=Q(role=Role.ADMIN, is_staff=True) | (~Q(role=Role.ADMIN) & Q(is_staff=False)),
                name="user_admin_role_iff_staff",
            ),
        ]

    def save(self, *args, **kwargs):
        # The admin role and Django's staff flag are one fact; the role is the source of truth.
        self.is_staff = self.role == Role.ADMIN
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "role" in update_fields:
            kwargs["update_fields"] = {*update_fields, "is_staff"}
        super().save(*args, **kwargs)

    @property
    def can_label(self) -> bool:
        return self.role in (Role.LABELER, Role.ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN
