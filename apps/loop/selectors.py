"""Reads for the learning loop: the preference pairs an assistant's versions have earned, and its history.

Gathering. Two sources say which of two answers of the assistant people prefer:
- labeling: every task set with candidates from the assistant's versions. A task's consensus (apps.labeling:
  counted rankings, Tideman's ranked pairs, not-rankable and excluded labelers left out) gives its C(K,2)
  ordered pairs, ties left out; a pair counts when both of its candidates came from this assistant's
  versions (another owner's answers never reach this owner's dataset) and it teaches something (two
  different, non-empty answers). Its time is that of the task's last counted ranking.
- arena: battles between two versions of the assistant with a decisive vote (A or B better), counted in
  the ratings or left out of them only because the owner named the pair (a named battle's vote is still a
  preference). Ties, both-bad, identity leaks, over-the-cap votes and failed answers give nothing. A battle
  of one turn gives one pair; a longer one gives nothing, because its vote judges whole conversations that
  diverge after the first answer. Its time is the vote's.
Filters: the sources, a date range (inclusive, in the site's time zone, on the pair's time) and, for
labeling, a choice of task sets (none chosen: all). Pairs are deduplicated on (prompt, chosen, rejected)
after trimming, the first kept (labeling before arena, oldest first), so a pair ranked in two task sets
trains once. Each pair keeps its provenance (source, where, when, the two versions).

Records are TRL's conversational preference rows, as the fine-tune importer takes them: the prompt is the
parent version's instructions as the engine renders them (a system message) and the user's question, so
the model learns in the context it answers in.

Training defaults by data size (`loop_training_settings`), measured with bench/loop.py on this machine:
DPO on LoRA r16 (all linear layers), beta 0.1, batch 4, and enough epochs that a small set still takes
about `TARGET_STEPS` optimizer steps (1 epoch from 4 × TARGET_STEPS pairs, at most `MAX_EPOCHS`) at a
learning rate that falls with the data size: `SMALL_DATA_LEARNING_RATE` up to `SMALL_DATA_PAIRS` pairs,
DPO_DEFAULTS' 5e-5 from `LARGE_DATA_PAIRS`, geometric in between. Few pairs need larger, repeated steps to
move the model at all; many pairs would overfit at that rate.
"""

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime

from django.db.models import Count, QuerySet
from django.utils import timezone

from apps.arena.models import Battle, BattleAnswer, Exclusion, Mode, Outcome
from apps.arena.selectors import leaderboard_get
from apps.assistants.engine import instructions_render
from apps.assistants.models import Assistant, AssistantVersion
from apps.finetune.models import MetricPoint
from apps.finetune.scan import Finding, dataset_scan
from apps.finetune.training_settings import DPO_DEFAULTS, TrainingSettings
from apps.labeling.models import Candidate, Task, TaskSet
from apps.labeling.selectors import counted_rankings, pair_teaches, task_consensus
from apps.loop.models import ARENA, LABELING, SOURCES, LoopRun, source_counts

MIN_PAIRS = 8  # fewer cannot move a model in a way worth a job
TARGET_STEPS = 40
MAX_EPOCHS = 4
SMALL_DATA_PAIRS, LARGE_DATA_PAIRS = 200, 2000
SMALL_DATA_LEARNING_RATE = 2e-4


@dataclass(frozen=True)
class PairFilters:
    sources: tuple[str, ...] = SOURCES
    since: date | None = None
    until: date | None = None
    task_set_ids: tuple[int, ...] = ()  # labeling only; empty: every task set

    def as_dict(self) -> dict:
        data = asdict(self)
        data["since"] = self.since.isoformat() if self.since else None
        data["until"] = self.until.isoformat() if self.until else None
        return data

    def describe(self) -> str:
        parts = [" and ".join(self.sources) or "no source"]
        if self.task_set_ids:
            parts.append("task sets " + ", ".join(str(pk) for pk in self.task_set_ids))
        if self.since or self.until:
            parts.append(f"{self.since or '…'} to {self.until or '…'}")
        return "; ".join(parts)


@dataclass(frozen=True)
class LoopPair:
    prompt: str
    chosen: str
    rejected: str
    source: str  # LABELING or ARENA
    origin: str  # where it came from, for people: the task set and task, or the battle
    at: datetime
    chosen_version: int  # version numbers
    rejected_version: int

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "origin": self.origin,
            "at": self.at.isoformat(),
            "chosen_version": self.chosen_version,
            "rejected_version": self.rejected_version,
        }


@dataclass
class LoopGathering:
    pairs: list[LoopPair]
    records: list[dict]  # the dataset's rows, one per pair, in order
    duplicates: int  # pairs dropped as repeats
    findings: list[Finding] = field(default_factory=list)

    @property
    def by_source(self) -> dict[str, int]:
        return source_counts(p.source for p in self.pairs)

    @property
    def high_findings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "high")


def loop_task_sets(*, assistant: Assistant) -> QuerySet[TaskSet]:
    """Task sets that have candidates from the assistant's versions, newest first."""
    ids = Candidate.objects.filter(version__assistant=assistant).values("task__task_set_id")
    return TaskSet.objects.filter(pk__in=ids).order_by("-created_at")


def _within(at: datetime, filters: PairFilters) -> bool:
    day = timezone.localdate(at)
    return (filters.since is None or day >= filters.since) and (filters.until is None or day <= filters.until)


def _labeling_pairs(assistant: Assistant, filters: PairFilters) -> Iterable[LoopPair]:
    task_sets = loop_task_sets(assistant=assistant).order_by("created_at", "pk")
    if filters.task_set_ids:
        task_sets = task_sets.filter(pk__in=filters.task_set_ids)
    for task_set in task_sets:
        by_task = counted_rankings(task_set=task_set)
        candidates: dict = {}
        rows = Candidate.objects.filter(task__task_set=task_set, version__assistant=assistant)
        for task_id, index, text, number in rows.values_list("task_id", "index", "text", "version__number"):
            candidates.setdefault(task_id, {})[index] = (text, number)
        for task in Task.objects.filter(pk__in=by_task.keys()).order_by("created_at", "id"):
            rankings = by_task[task.pk]
            at = max(r.created_at for r in rankings)
            consensus = task_consensus(task=task, rankings=rankings)
            if consensus is None or not _within(at, filters):
                continue
            own = candidates.get(task.pk, {})
            for chosen, rejected in consensus.pairs():
                if chosen not in own or rejected not in own:
                    continue
                (chosen_text, chosen_number), (rejected_text, rejected_number) = own[chosen], own[rejected]
                if pair_teaches(chosen=chosen_text, rejected=rejected_text):
                    yield LoopPair(
                        prompt=task.prompt,
                        chosen=chosen_text,
                        rejected=rejected_text,
                        source=LABELING,
                        origin=f"task set {task_set.pk} “{task_set.name}”, task {task.pk}",
                        at=at,
                        chosen_version=chosen_number,
                        rejected_version=rejected_number,
                    )


def _arena_pairs(assistant: Assistant, filters: PairFilters) -> Iterable[LoopPair]:
    battles = (
        Battle.objects.filter(
            version_a__assistant=assistant,
            version_b__assistant=assistant,
            vote__in=[Outcome.A, Outcome.B],
            excluded_reason__in=["", Exclusion.NAMED],
        )
        .annotate(turn_count=Count("turns"))
        .filter(turn_count=1)
        .select_related("version_a", "version_b")
        .order_by("voted_at", "pk")
    )
    battles = [b for b in battles if _within(b.voted_at, filters)]
    answers: dict = {}
    done = BattleAnswer.objects.filter(turn__battle__in=[b.pk for b in battles], status=BattleAnswer.Status.DONE)
    for answer in done.select_related("turn"):
        answers.setdefault(answer.turn.battle_id, {})[answer.side] = (answer.turn.prompt, answer.content)
    for battle in battles:
        sides = answers.get(battle.pk, {})
        if len(sides) != 2:
            continue
        winner, loser = ("a", "b") if battle.vote == Outcome.A else ("b", "a")
        (prompt, chosen), (_, rejected) = sides[winner], sides[loser]
        if pair_teaches(chosen=chosen, rejected=rejected):
            yield LoopPair(
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                source=ARENA,
                origin=f"battle {battle.pk}",
                at=battle.voted_at,
                chosen_version=battle.version_of(winner).number,
                rejected_version=battle.version_of(loser).number,
            )


def loop_pairs(*, assistant: Assistant, filters: PairFilters) -> tuple[list[LoopPair], int]:
    """The assistant's preference pairs under `filters`, deduplicated, and how many repeats were dropped."""
    found = []
    if LABELING in filters.sources:
        found += _labeling_pairs(assistant, filters)
    if ARENA in filters.sources:
        found += _arena_pairs(assistant, filters)
    seen, pairs = set(), []
    for pair in found:
        key = (pair.prompt.strip(), pair.chosen.strip(), pair.rejected.strip())
        if key not in seen:
            seen.add(key)
            pairs.append(pair)
    return pairs, len(found) - len(pairs)


def loop_record(*, version: AssistantVersion, pair: LoopPair) -> dict:
    """One pair as a training row, in the context the version answers in (its rendered instructions)."""
    system = instructions_render(text=version.instructions, user_name="")
    return {
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": pair.prompt}],
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def loop_gather(*, assistant: Assistant, filters: PairFilters, scan: bool = True) -> LoopGathering:
    """The pairs, their training rows for the current version, and (with `scan`) the poisoning scan's findings."""
    pairs, duplicates = loop_pairs(assistant=assistant, filters=filters)
    version = assistant.current_version
    records = [loop_record(version=version, pair=pair) for pair in pairs]
    findings = dataset_scan(examples=records) if scan and records else []
    return LoopGathering(pairs=pairs, records=records, duplicates=duplicates, findings=findings)


def loop_training_settings(*, pairs: int) -> TrainingSettings:
    """DPO settings that suit `pairs` preference pairs (see the module docstring)."""
    steps_per_epoch = max(1, math.ceil(pairs / DPO_DEFAULTS.batch_size))
    epochs = max(1, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    if pairs <= SMALL_DATA_PAIRS:
        learning_rate = SMALL_DATA_LEARNING_RATE
    elif pairs >= LARGE_DATA_PAIRS:
        learning_rate = DPO_DEFAULTS.learning_rate
    else:
        share = math.log(pairs / SMALL_DATA_PAIRS) / math.log(LARGE_DATA_PAIRS / SMALL_DATA_PAIRS)
        learning_rate = SMALL_DATA_LEARNING_RATE * (DPO_DEFAULTS.learning_rate / SMALL_DATA_LEARNING_RATE) ** share
    return replace(DPO_DEFAULTS, epochs=epochs, learning_rate=float(f"{learning_rate:.3g}"))


# --- history -------------------------------------------------------------------------------------------


@dataclass
class VersionHistory:
    version: AssistantVersion
    state: str  # "current", "draft" or "published"
    run: LoopRun | None  # the loop run whose job trained it (None: saved in the builder)
    metrics: dict  # {"train": last train point's values, "validation": last validation point's values}
    rating: dict | None  # its My arena leaderboard row (rating, low, high, votes...), None before any vote
    parent_rating: dict | None


@dataclass
class LoopHistory:
    versions: list[VersionHistory]
    runs: list[LoopRun]  # newest first, those still training included
    chart: dict  # what static/js/loop.js draws: each rated version beside its rated parent
    board_computed_at: datetime | None


def _last_points(jobs: list) -> dict:
    """(job id, kind) -> the values of the job's last train or validation point."""
    points: dict = {}
    for job_id, kind, values in (
        MetricPoint.objects.filter(job__in=jobs, kind__in=["train", "validation"])
        .order_by("job_id", "kind", "-step")
        .values_list("job_id", "kind", "values")
    ):
        points.setdefault((job_id, kind), values)
    return points


def loop_history(*, assistant: Assistant) -> LoopHistory:
    """Every version of the assistant, newest first, with what trained it, its job's last metrics and its My
    arena rating next to its parent's (from the owner's cached leaderboard)."""
    runs = list(
        assistant.loop_runs.select_related("parent", "draft", "dataset_version__dataset", "job").order_by("-created_at")
    )
    run_of_draft = {run.draft_id: run for run in runs if run.draft_id}
    points = _last_points([run.job_id for run in runs])
    snapshot = leaderboard_get(mode=Mode.PERSONAL, owner=assistant.owner)
    ratings = {row["version_id"]: row for row in snapshot.payload["rows"]} if snapshot else {}
    rows = []
    for version in assistant.versions.select_related("parent", "base_model").order_by("-number"):
        run = run_of_draft.get(version.pk)
        if version.pk == assistant.current_version_id:
            state = "current"
        else:
            state = "draft" if version.is_draft else "published"
        rows.append(
            VersionHistory(
                version=version,
                state=state,
                run=run,
                metrics={kind: points.get((run.job_id, kind), {}) for kind in ("train", "validation")} if run else {},
                rating=ratings.get(version.pk),
                parent_rating=ratings.get(version.parent_id) if version.parent_id else None,
            )
        )
    paired = [row for row in reversed(rows) if row.rating and row.parent_rating]
    chart = {
        "labels": [f"v{row.version.number} vs its parent v{row.version.parent.number}" for row in paired],
        "version": [[row.rating["low"], row.rating["high"]] for row in paired],
        "version_ratings": [row.rating["rating"] for row in paired],
        "parent": [[row.parent_rating["low"], row.parent_rating["high"]] for row in paired],
        "parent_ratings": [row.parent_rating["rating"] for row in paired],
    }
    return LoopHistory(
        versions=rows, runs=runs, chart=chart, board_computed_at=snapshot.computed_at if snapshot else None
    )


def loop_drafts_for_owner(*, owner) -> QuerySet[AssistantVersion]:
    """The owner's drafts awaiting review, newest first: the dashboard's notifications."""
    return (
        AssistantVersion.objects.filter(assistant__owner=owner, published_at__isnull=True)
        .select_related("assistant", "parent")
        .order_by("-created_at")
    )
