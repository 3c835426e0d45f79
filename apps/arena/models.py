"""Arena battles: two assistant versions answer the same prompts blind, and the user votes once.

A `Battle` holds the pair (left/right as shown), how it was chosen (the sampler's probability, or
`named` when the user picked both), and the one vote. Each prompt is a `BattleTurn`; each side's
answer to it is a `BattleAnswer`, generated in a worker like a chat answer and kept with its latency
and token count for audit. The vote's fields are written once, by `battle_vote` under a row lock; the
constraints keep them consistent (a vote has a time, and an excluded battle says why).
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class Mode(models.TextChoices):
    PUBLIC = "public", "Public arena"
    PERSONAL = "personal", "My arena"


class Outcome(models.TextChoices):
    A = "a", "Assistant A is better"
    B = "b", "Assistant B is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both are bad"


# apps.arena.ratings' winner names for each outcome.
RATING_WINNERS = {Outcome.A: "model_a", Outcome.B: "model_b", Outcome.TIE: "tie", Outcome.BOTH_BAD: "tie (bothbad)"}


class Exclusion(models.TextChoices):
    """Why a voted battle does not count in the ratings (it is kept for audit all the same)."""

    NAMED = "named", "The user picked both versions"
    IDENTITY_LEAK = "identity_leak", "An answer named an assistant"
    DAILY_CAP = "daily_cap", "Over the user's daily vote cap"
    ANSWER_FAILED = "answer_failed", "An answer failed"


class Side(models.TextChoices):
    A = "a", "Assistant A"
    B = "b", "Assistant B"


class Battle(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    mode = models.CharField(max_length=10, choices=Mode.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="battles")
    version_a = models.ForeignKey("assistants.AssistantVersion", on_delete=models.PROTECT, related_name="+")
    version_b = models.ForeignKey("assistants.AssistantVersion", on_delete=models.PROTECT, related_name="+")
    # The sampler's probability of this unordered pair when it was drawn; null for a named battle.
    sampling_probability = models.FloatField(null=True, blank=True)
    named = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    vote = models.CharField(max_length=10, choices=Outcome.choices, blank=True)
    voted_at = models.DateTimeField(null=True, blank=True)
    excluded_reason = models.CharField(max_length=20, choices=Exclusion.choices, blank=True)
    excluded_detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(mode__in=Mode.values), name="battle_mode_valid"),
            models.CheckConstraint(condition=~Q(version_a=F("version_b")), name="battle_two_versions"),
            models.CheckConstraint(
                condition=Q(named=True, sampling_probability__isnull=True)
                | Q(named=False, sampling_probability__gt=0, sampling_probability__lte=1),
                name="battle_sampled_has_probability",
            ),
            models.CheckConstraint(
                condition=Q(vote="", voted_at__isnull=True) | Q(vote__in=Outcome.values, voted_at__isnull=False),
                name="battle_vote_has_time",
            ),
            models.CheckConstraint(
                condition=Q(excluded_reason="") | ~Q(vote=""), name="battle_excluded_only_when_voted"
            ),
            models.CheckConstraint(
                condition=Q(excluded_reason__in=["", *Exclusion.values]), name="battle_exclusion_valid"
            ),
            models.CheckConstraint(
                condition=Q(named=False) | Q(vote="") | Q(excluded_reason=Exclusion.NAMED),
                name="battle_named_never_rated",
            ),
        ]
        indexes = [
            models.Index(fields=["mode", "voted_at"]),
            models.Index(fields=["user", "voted_at"]),
        ]

    def __str__(self) -> str:
        return f"Battle {self.pk} ({self.get_mode_display()})"

    @property
    def voted(self) -> bool:
        return bool(self.vote)

    def version_of(self, side: str):
        return self.version_a if side == Side.A else self.version_b


class BattleTurn(models.Model):
    battle = models.ForeignKey(Battle, on_delete=models.CASCADE, related_name="turns")
    number = models.PositiveIntegerField()
    prompt = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["battle", "number"]
        constraints = [
            models.UniqueConstraint(fields=["battle", "number"], name="battleturn_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=1), name="battleturn_number_positive"),
            models.CheckConstraint(condition=~Q(prompt=""), name="battleturn_has_prompt"),
        ]

    def __str__(self) -> str:
        return f"Turn {self.number} of {self.battle_id}"


class BattleAnswer(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the model"
        STREAMING = "streaming", "Streaming"
        DONE = "done", "Done"
        ERROR = "error", "Failed"

    TERMINAL = (Status.DONE, Status.ERROR)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    turn = models.ForeignKey(BattleTurn, on_delete=models.CASCADE, related_name="answers")
    side = models.CharField(max_length=1, choices=Side.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    error = models.CharField(max_length=500, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    completion_tokens = models.PositiveIntegerField(default=0)
    context = models.JSONField(default=dict, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True, help_text="From the claim to the last token.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["turn", "side"]
        constraints = [
            models.UniqueConstraint(fields=["turn", "side"], name="battleanswer_one_per_side"),
            models.CheckConstraint(condition=Q(side__in=Side.values), name="battleanswer_side_valid"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "streaming", "done", "error"]), name="battleanswer_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_side_display()} on {self.turn}"

    @property
    def finished(self) -> bool:
        return self.status in self.TERMINAL


class LeaderboardSnapshot(models.Model):
    """The leaderboard as last computed by the refresh task: pages read this row and never refit."""

    mode = models.CharField(max_length=10, choices=Mode.choices)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    computed_at = models.DateTimeField()
    payload = models.JSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["mode"], condition=Q(owner__isnull=True), name="leaderboardsnapshot_one_public"
            ),
            models.UniqueConstraint(
                fields=["mode", "owner"], condition=Q(owner__isnull=False), name="leaderboardsnapshot_one_per_owner"
            ),
            models.CheckConstraint(
                condition=Q(mode=Mode.PUBLIC, owner__isnull=True) | Q(mode=Mode.PERSONAL, owner__isnull=False),
                name="leaderboardsnapshot_owner_matches_mode",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_mode_display()} leaderboard ({self.owner or 'everyone'})"


class VoterFlag(models.Model):
    """A user whose votes disagree with the crowd more than chance allows (see apps.arena.hygiene)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="arena_flag")
    votes_compared = models.PositiveIntegerField()
    agreements = models.PositiveIntegerField()
    expected_agreement = models.FloatField(help_text="The crowd's mean majority share on the same pairs.")
    p_value = models.FloatField()
    flagged_at = models.DateTimeField()
    reviewed = models.BooleanField(default=False)

    class Meta:
        ordering = ["reviewed", "p_value"]
        constraints = [
            models.CheckConstraint(condition=Q(agreements__lte=F("votes_compared")), name="voterflag_counts_valid"),
        ]

    def __str__(self) -> str:
        return f"Arena flag for {self.user}"
