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
    # Off by default: only then may the labeling panel sample this person's chats as prompts.
    data_sharing = models.BooleanField(
        default=False, help_text="Allow my chat questions to be used as prompts for labeling (training data)."
    )

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


class ApiKey(models.Model):
    """A personal key for the OpenAI-compatible API. Only a SHA-256 of the key is stored: the key is
    high-entropy random, so a fast hash is enough, and the clear key is shown once when it is made."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it by.")
    hashed_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(hashed_key__regex=r"^[0-9a-f]{64}$"), name="apikey_sha256_hex")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
