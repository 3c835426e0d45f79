"""Conversations are trees of messages: editing a question or regenerating an answer adds a sibling,
so older versions stay as branches. `Conversation.current_leaf` says which branch is on screen."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # A signed-in user, or an anonymous visitor of a share link identified by their session.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="conversations"
    )
    session_key = models.CharField(max_length=64, blank=True)
    assistant = models.ForeignKey("assistants.Assistant", on_delete=models.CASCADE, related_name="conversations")
    # Set when the conversation was started through a share link: access then also needs that link to
    # still be valid, so revoking the link cuts off every visitor's conversation too.
    share_token = models.CharField(max_length=64, blank=True)
    title = models.CharField(max_length=120, blank=True)
    current_leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # A read-only link to the branch as it was when shared (`snapshot_leaf` and its ancestors).
    snapshot_token = models.CharField(max_length=64, unique=True, null=True, blank=True)
    snapshot_leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(owner__isnull=False) | ~Q(session_key=""), name="conversation_has_owner_or_session"
            ),
            models.CheckConstraint(condition=~Q(snapshot_token=""), name="conversation_snapshot_token_not_empty"),
        ]
        indexes = [models.Index(fields=["owner", "-updated_at"]), models.Index(fields=["session_key"])]

    def __str__(self) -> str:
        return self.title or "New chat"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the model"
        STREAMING = "streaming", "Streaming"
        DONE = "done", "Done"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Failed"

    TERMINAL = (Status.DONE, Status.STOPPED, Status.ERROR)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    error = models.CharField(max_length=500, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    # The configuration that produced an answer (assistant messages only).
    assistant_version = models.ForeignKey(
        "assistants.AssistantVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Per generated token: [text, logprob, [[alternative, logprob], ...]] for the token inspector.
    tokens = models.JSONField(default=list, blank=True)
    token_count = models.PositiveIntegerField(null=True, blank=True, help_text="This turn's tokens in the prompt.")
    # How the prompt filled the context window for this answer: the gauge and the "dropped turns" notice.
    context = models.JSONField(default=dict, blank=True)
    # The knowledge passages the answer was given, numbered as the model cites them:
    # [{n, chunk_id, document, document_id, version_id, page, start, end}] (apps/knowledge/prompting.py).
    sources = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=["user", "assistant"]), name="message_role_valid"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "streaming", "done", "stopped", "error"]),
                name="message_status_valid",
            ),
            models.CheckConstraint(condition=~Q(role="user") | Q(status="done"), name="message_user_is_done"),
            models.CheckConstraint(
                condition=~Q(role="assistant") | Q(assistant_version__isnull=False), name="message_answer_has_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"

    @property
    def finished(self) -> bool:
        return self.status in self.TERMINAL
