"""The learning loop's record: one `LoopRun` per "Improve this assistant" confirmation.

It ties together what the loop joins: the assistant and the version it improves (`parent`, current when the
run started), the filters the preference pairs were gathered with, each pair's provenance (its source, and so
how many came from each), the immutable preference dataset version built from them, the DPO job, and, once
the job succeeds, the draft version that carries the new adapter. The history page reads these rows; the
job-success hook (apps/loop/drafts.py) fills `draft` in.
"""

from collections import Counter
from collections.abc import Iterable

from django.conf import settings
from django.db import models

LABELING, ARENA = "labeling", "arena"
SOURCES = (LABELING, ARENA)


class LoopRun(models.Model):
    assistant = models.ForeignKey("assistants.Assistant", on_delete=models.CASCADE, related_name="loop_runs")
    parent = models.ForeignKey(
        "assistants.AssistantVersion",
        on_delete=models.CASCADE,
        related_name="+",
        help_text="The version improved: the current one when the run started.",
    )
    filters = models.JSONField(default=dict, help_text="The gathering filters (sources, dates, task sets).")
    # One entry per dataset example, in its order: {"source", "origin", "at", "chosen_version", "rejected_version"}.
    provenance = models.JSONField(default=list)
    dataset_version = models.ForeignKey("finetune.DatasetVersion", on_delete=models.PROTECT, related_name="loop_runs")
    job = models.OneToOneField("finetune.FineTuneJob", on_delete=models.CASCADE, related_name="loop_run")
    draft = models.OneToOneField(
        "assistants.AssistantVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="loop_run",
        help_text="The draft made from the job's adapter, once the job succeeded.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Loop run {self.pk} on {self.assistant}"

    @property
    def pair_counts(self) -> dict[str, int]:
        """Pairs per source, from the provenance: {'labeling': n, 'arena': m}."""
        return source_counts(entry["source"] for entry in self.provenance)


def source_counts(sources: Iterable[str]) -> dict[str, int]:
    """How many of `sources` are each of SOURCES, every source named (0 when absent)."""
    counts = Counter(sources)
    return {source: counts[source] for source in SOURCES}
