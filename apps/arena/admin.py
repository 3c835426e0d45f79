from django.contrib import admin

from apps.arena.models import Battle, BattleAnswer, BattleTurn, LeaderboardSnapshot, VoterFlag


class BattleTurnInline(admin.TabularInline):
    model = BattleTurn
    fields = ("number", "prompt", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Battle)
class BattleAdmin(admin.ModelAdmin):
    """Everything kept for audit, read-only: votes are immutable."""

    list_display = ("pk", "mode", "user", "version_a", "version_b", "named", "vote", "excluded_reason", "created_at")
    list_filter = ("mode", "named", "vote", "excluded_reason")
    search_fields = ("user__username",)
    readonly_fields = [field.name for field in Battle._meta.fields]
    inlines = [BattleTurnInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(BattleAnswer)
class BattleAnswerAdmin(admin.ModelAdmin):
    list_display = ("__str__", "status", "completion_tokens", "first_token_ms", "latency_ms", "finished_at")
    list_filter = ("status", "side")
    readonly_fields = [field.name for field in BattleAnswer._meta.fields]


@admin.register(VoterFlag)
class VoterFlagAdmin(admin.ModelAdmin):
    """Users whose votes disagree with the crowd beyond chance (apps.arena.hygiene): review, then mark."""

    list_display = ("user", "votes_compared", "agreements", "expected_agreement", "p_value", "flagged_at", "reviewed")
    list_filter = ("reviewed",)
    readonly_fields = ("user", "votes_compared", "agreements", "expected_agreement", "p_value", "flagged_at")


@admin.register(LeaderboardSnapshot)
class LeaderboardSnapshotAdmin(admin.ModelAdmin):
    list_display = ("mode", "owner", "computed_at")
    readonly_fields = ("mode", "owner", "computed_at", "payload")
