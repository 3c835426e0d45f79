"""An assistant is a name and a share setting around a chain of immutable versions.

Everything that shapes an answer (instructions, model, adapter, knowledge, sampling) lives on an
`AssistantVersion`; every save makes a new one. Answers point at the version that wrote them, so
editing an assistant never rewrites history.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

MAX_STARTER_PROMPTS = 4


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private: only you"
    LINK = "link", "Link: anyone holding the share link"
    PUBLIC = "public", "Public: listed in the gallery"


class Assistant(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assistants")
    slug = models.SlugField(max_length=60, unique=True)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE)
    # The share link: an unguessable token, re-issued to revoke, optionally expiring.
    share_token = models.CharField(max_length=64, unique=True, null=True, blank=True)
    share_expires_at = models.DateTimeField(null=True, blank=True)
    # Moderation: an admin can take a public assistant out of the gallery without deleting it.
    unlisted = models.BooleanField(default=False)
    avatar = models.CharField(max_length=200, blank=True, help_text="Path of the re-encoded PNG under MEDIA_ROOT.")
    current_version = models.OneToOneField(
        "AssistantVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.CheckConstraint(condition=Q(visibility__in=Visibility.values), name="assistant_visibility_valid"),
            models.CheckConstraint(condition=~Q(share_token=""), name="assistant_share_token_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return self.current_version.name if self.current_version_id else self.slug

    @property
    def listed(self) -> bool:
        return self.visibility == Visibility.PUBLIC and not self.unlisted


class AssistantVersion(models.Model):
    """One immutable configuration of an assistant. Never updated after it is created."""

    assistant = models.ForeignKey(Assistant, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=300, blank=True)
    instructions = models.TextField(
        blank=True, help_text="The system prompt. {{date}} and {{user_name}} are filled in for each chat."
    )
    starter_prompts = models.JSONField(default=list, blank=True)
    base_model = models.ForeignKey("registry.BaseModel", on_delete=models.PROTECT, related_name="+")
    # The owner's fine-tune (a LoRA the engine serves as adapter.engine_id); none: the base model answers.
    adapter = models.ForeignKey(
        "finetune.Adapter", null=True, blank=True, on_delete=models.PROTECT, related_name="versions"
    )
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=0.95)
    max_tokens = models.PositiveIntegerField(default=512)
    repetition_penalty = models.FloatField(default=1.1)
    knowledge_collections = models.ManyToManyField("knowledge.Collection", blank=True, related_name="+")
    # --- knowledge retrieval (apps/knowledge/retrieval.py) ---
    knowledge_top_k = models.PositiveSmallIntegerField(default=4, help_text="Passages retrieved per answer.")
    knowledge_min_score = models.FloatField(
        default=0.0, help_text="Leave out passages whose fused score (reciprocal rank fusion) is below this."
    )
    knowledge_share_documents = models.BooleanField(
        default=False, help_text="Visitors may read whole cited documents, not only the cited passages."
    )
    canary = models.CharField(
        max_length=64, blank=True, help_text="A secret string in the instructions; an answer that leaks it is withheld."
    )
    # --- end knowledge retrieval ---
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["assistant", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["assistant", "number"], name="assistantversion_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=1), name="assistantversion_number_positive"),
            models.CheckConstraint(
                condition=Q(temperature__gte=0) & Q(temperature__lte=2), name="assistantversion_temperature_0_2"
            ),
            models.CheckConstraint(condition=Q(top_p__gt=0) & Q(top_p__lte=1), name="assistantversion_top_p_0_1"),
            models.CheckConstraint(
                condition=Q(max_tokens__gte=1) & Q(max_tokens__lte=4096), name="assistantversion_max_tokens_range"
            ),
            models.CheckConstraint(
                condition=Q(repetition_penalty__gte=1) & Q(repetition_penalty__lte=2),
                name="assistantversion_repetition_penalty_1_2",
            ),
            models.CheckConstraint(
                condition=Q(knowledge_top_k__gte=1) & Q(knowledge_top_k__lte=20), name="assistantversion_top_k_1_20"
            ),
            models.CheckConstraint(
                condition=Q(knowledge_min_score__gte=0) & Q(knowledge_min_score__lte=1),
                name="assistantversion_min_score_0_1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.number}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("An assistant version is immutable: save a new version instead.")
        if len(self.starter_prompts) > MAX_STARTER_PROMPTS or not all(isinstance(p, str) for p in self.starter_prompts):
            raise ValueError(f"At most {MAX_STARTER_PROMPTS} starter prompts, each a string.")
        super().save(*args, **kwargs)


class CanaryIncident(models.Model):
    """An answer that wrote its version's canary (instructions leaking): the text was withheld from the
    person chatting and kept here for the owner, who sees these on the assistant's page and in the admin."""

    version = models.ForeignKey(AssistantVersion, on_delete=models.CASCADE, related_name="canary_incidents")
    message_id = models.UUIDField(help_text="The withheld answer (chat.Message).")
    withheld_text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Canary leaked by {self.version} at {self.created_at:%Y-%m-%d %H:%M}"


class AssistantReport(models.Model):
    """A user's report of a public assistant, once per user; admins review them in the admin."""

    assistant = models.ForeignKey(Assistant, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField(max_length=1000)
    resolved = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["resolved", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["assistant", "reporter"], name="assistantreport_once_per_user"),
            models.CheckConstraint(condition=~Q(reason=""), name="assistantreport_has_reason"),
        ]

    def __str__(self) -> str:
        return f"Report on {self.assistant.slug} by {self.reporter}"
