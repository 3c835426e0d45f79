"""The labeling panel's data: task sets of prompts, K generated candidates per prompt, versioned guidelines,
claims (who is working on what, until when), rankings and labeler exclusions.

Invariants live here as constraints: a labeler ranks a task at most once and holds at most one claim on it
(UniqueConstraint), a ranking is either an order or a not-rankable reason (CheckConstraint), K is 2–9 and R is
at least 1. The workflows (claiming, submitting, generating) are in services.py.

Orders are lists of candidate indices (Candidate.index, 0..K−1), best first, as aggregation.py expects.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

MIN_CANDIDATES, MAX_CANDIDATES = 2, 9


class TaskSet(models.Model):
    class Status(models.TextChoices):
        GENERATING = "generating", "Generating candidates"
        READY = "ready", "Ready"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=120)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    versions = models.ManyToManyField("assistants.AssistantVersion", related_name="+")
    candidates_per_task = models.PositiveSmallIntegerField(default=4)
    rankings_per_task = models.PositiveSmallIntegerField(default=3)
    # Overrides of the versions' own sampling settings (temperature, top_p), recorded on each candidate too.
    sampling = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(default=0)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.GENERATING)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    error = models.CharField(max_length=500, blank=True)
    claim_minutes = models.PositiveSmallIntegerField(default=20)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(candidates_per_task__gte=MIN_CANDIDATES) & Q(candidates_per_task__lte=MAX_CANDIDATES),
                name="taskset_candidates_2_9",
            ),
            models.CheckConstraint(condition=Q(rankings_per_task__gte=1), name="taskset_rankings_positive"),
            models.CheckConstraint(condition=Q(claim_minutes__gte=1), name="taskset_claim_minutes_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class Guideline(models.Model):
    """One version of a task set's guidelines (Markdown). Never edited: a change is a new version."""

    task_set = models.ForeignKey(TaskSet, on_delete=models.CASCADE, related_name="guidelines")
    version = models.PositiveIntegerField()
    text = models.TextField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task_set", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["task_set", "version"], name="guideline_unique_version"),
            models.CheckConstraint(condition=Q(version__gte=1), name="guideline_version_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.task_set} guidelines v{self.version}"


class Task(models.Model):
    """One prompt of a task set. `author` wrote the prompt (the chat's owner, or the admin who typed it), so
    they never rank it. A gold task has a known order (`gold_order`) and is served like any other. Sampled
    gold tasks (`gold_sampled`, chosen by services.task_set_gold_sample) wait for their order from the admin
    or from a unanimous consensus; `gold_agreed_by` lists the labelers whose rankings made that consensus
    (empty when the order is the admin's), who are therefore not scored against it."""

    class Source(models.TextChoices):
        TYPED = "typed", "Typed"
        UPLOADED = "uploaded", "Uploaded (JSONL)"
        CHAT = "chat", "Sampled from a chat"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_set = models.ForeignKey(TaskSet, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.TextField()
    source = models.CharField(max_length=10, choices=Source.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    gold_order = models.JSONField(null=True, blank=True)
    gold_sampled = models.BooleanField(default=False)
    gold_agreed_by = models.JSONField(default=list, blank=True)  # labeler ids
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task_set", "created_at", "id"]

    def __str__(self) -> str:
        return self.prompt[:60]

    @property
    def is_gold(self) -> bool:
        return self.gold_order is not None

    @property
    def served_to_all(self) -> bool:
        """Every labeler meets it once (R does not cap it): a gold task, or a sampled one awaiting its order."""
        return self.is_gold or self.gold_sampled


class Candidate(models.Model):
    """One generated answer. `seed` and `stream` reproduce it: the engine seeds choice `stream` of an n>1
    request from [seed, stream]."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="candidates")
    index = models.PositiveSmallIntegerField()
    text = models.TextField()
    version = models.ForeignKey("assistants.AssistantVersion", null=True, on_delete=models.SET_NULL, related_name="+")
    sampling = models.JSONField(default=dict)
    seed = models.BigIntegerField()
    stream = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["task", "index"]
        constraints = [models.UniqueConstraint(fields=["task", "index"], name="candidate_unique_index")]

    def __str__(self) -> str:
        return f"candidate {self.index + 1}"


class Claim(models.Model):
    """A labeler working on a task until `expires_at`, with the shuffled order the candidates were shown in.
    An expired claim no longer holds a slot; the same labeler re-claiming the task renews this row."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="claims")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    presented_order = models.JSONField()
    claimed_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "labeler"], name="claim_unique_task_labeler")]

    def __str__(self) -> str:
        return f"claim by {self.labeler_id} until {self.expires_at:%H:%M}"


class Ranking(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="rankings")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    order = models.JSONField(null=True, blank=True)  # None when not rankable
    presented_order = models.JSONField()
    not_rankable_reason = models.CharField(max_length=500, blank=True)
    guideline = models.ForeignKey(Guideline, null=True, on_delete=models.PROTECT, related_name="rankings")
    seconds_spent = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["task", "labeler"], name="ranking_unique_task_labeler"),
            models.CheckConstraint(
                condition=(Q(order__isnull=False) & Q(not_rankable_reason=""))
                | (Q(order__isnull=True) & ~Q(not_rankable_reason="")),
                name="ranking_order_xor_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"ranking by {self.labeler_id}"

    @property
    def rankable(self) -> bool:
        return self.order is not None


class LabelerExclusion(models.Model):
    """A labeler whose rankings in a task set no longer count: not in consensus, agreement or exports."""

    task_set = models.ForeignKey(TaskSet, on_delete=models.CASCADE, related_name="exclusions")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    excluded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task_set", "labeler"], name="exclusion_unique_labeler")]

    def __str__(self) -> str:
        return f"exclusion of {self.labeler_id}"
