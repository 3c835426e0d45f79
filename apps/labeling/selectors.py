"""Reads for the labeling panel: the fair queue order, consensus, the quality report and the exports.

Consensus. A task's counted rankings are those of labelers not excluded from its task set. A task is not
rankable (and yields nothing) when at least half of its counted rankings say so. Otherwise its consensus is
Tideman's ranked pairs over the ordered rankings (a gold task's consensus is its gold order). A consensus of K
candidates gives C(K,2) ordered pairs, each chosen above rejected in that order; a pair whose margin is 0 (as
many labelers put one above as below) is a tie and yields nothing. Inside a majority cycle the consensus may put
a candidate above one that a majority preferred (ranked pairs drops the cycle's weakest link); the pair still
follows the consensus, so the exported pairs are always one consistent order. A pair whose two answers are the
same text, or one of them empty (whitespace and invisible characters alone), teaches nothing and would be
refused by the fine-tune importer (`apps.finetune.datasets`): it yields nothing too.

Agreement. Every candidate pair (i < j) of a task is one item, and a labeler's label is whether they put i
above j. Krippendorff's α (nominal) runs over all labelers and items of the set; Cohen's κ over the items each
two labelers both labelled. Each labeler's Kendall τ is leave-one-out: for each task they ranked (gold tasks
aside), the consensus of the other labelers' counted rankings (at least one) is the reference, and their τ-b
against it counts its tied pairs (margin 0) as ties (`kendall_tau_b`); the labeler's τ is the mean over those
tasks. Their own ranking is left out of the reference because it would pull the reference towards them: with
three rankings, theirs alone decides every pair the other two split. A task whose other rankings tie every pair
(two labelers in exact disagreement) says nothing about the third and is skipped, where a tie-broken order
would score them against an arbitrary side. Gold accuracy is the share of a labeler's gold-task pairs ordered
as in the gold order, over the gold tasks whose order they did not make themselves (services: a consensus gold
order's panel is not scored against it).

Exports. Splits are made by prompt: the test split is the prompts whose SHA-256 falls in the first
`test_fraction` of the hash space, so the same prompt text always lands in the same split, whatever task set or
run it comes from. Formats:
- `trl`: TRL's conversational preference format, one JSON object per line with exactly `prompt` (a list of
  messages: the user turn), `chosen` and `rejected` (each a list with one assistant message).
- `hh`: Anthropic HH: `chosen` and `rejected` transcripts ("\\n\\nHuman: …\\n\\nAssistant: …") sharing the prompt.
- `kto`: TRL's conversational unpaired format (`prompt`, `completion`, `label`): a candidate is desirable when
  it is chosen in every pair it is in, undesirable when it loses every one, and left out otherwise.
"""

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from django.db.models import Count, F, Q

from apps.core.unicode import unicode_clean
from apps.labeling.aggregation import cohen_kappa, kendall_tau_b, krippendorff_alpha_nominal, ranked_pairs
from apps.labeling.models import Candidate, Claim, Ranking, Task, TaskSet

EXPORT_FORMATS = ("trl", "hh", "kto")
SPLITS = ("train", "test", "all")
DEFAULT_TEST_FRACTION = 0.1
TAU_THRESHOLD = 0.2  # a labeler whose mean τ against consensus is below this is flagged
GOLD_THRESHOLD = 0.7  # ... or whose gold accuracy is below this


def task_set_list() -> list[TaskSet]:
    return list(TaskSet.objects.annotate(task_count=Count("tasks")).order_by("-created_at"))


def task_queue_order(*, task_set: TaskSet, labeler, now) -> list:
    """Ids of the tasks `labeler` may claim in this set, fairest first: fewest rankings plus live claims, then
    oldest. Excludes tasks without candidates, tasks they wrote or ranked, and full ones (R rankings plus live
    claims; gold tasks, sampled ones awaiting their order included, are never full). The claim counts again
    under the task's lock."""
    tasks = (
        Task.objects.filter(task_set=task_set, candidates__index=0)
        .exclude(author=labeler)
        .exclude(rankings__labeler=labeler)
        .annotate(
            ranked=Count("rankings", distinct=True),
            live=Count("claims", filter=Q(claims__expires_at__gt=now) & ~Q(claims__labeler=labeler), distinct=True),
        )
        .annotate(taken=F("ranked") + F("live"))
        .filter(Q(gold_order__isnull=False) | Q(gold_sampled=True) | Q(taken__lt=task_set.rankings_per_task))
        .order_by("taken", "created_at", "id")
    )
    return list(tasks.values_list("id", flat=True))


def labeler_queue_count(*, task_set: TaskSet, labeler, now) -> int:
    return len(task_queue_order(task_set=task_set, labeler=labeler, now=now))


def claim_get(*, labeler, task_id) -> Claim | None:
    return Claim.objects.select_related("task__task_set").filter(labeler=labeler, task_id=task_id).first()


def labeler_rankings(*, labeler) -> list[Ranking]:
    """A labeler's own rankings; nobody else's are ever listed to them."""
    return list(Ranking.objects.filter(labeler=labeler).select_related("task__task_set", "guideline"))


def excluded_labeler_ids(*, task_set: TaskSet) -> set[int]:
    return set(task_set.exclusions.values_list("labeler_id", flat=True))


def counted_rankings(*, task_set: TaskSet) -> dict:
    """Task id -> the rankings that count (excluded labelers' dropped)."""
    excluded = excluded_labeler_ids(task_set=task_set)
    by_task = defaultdict(list)
    for ranking in Ranking.objects.filter(task__task_set=task_set).exclude(labeler_id__in=excluded).order_by("pk"):
        by_task[ranking.task_id].append(ranking)
    return by_task


@dataclass
class Consensus:
    order: list[int]
    margins: dict  # (i, j) -> #(i above j) − #(j above i)
    rankings: int

    def pairs(self) -> list[tuple[int, int]]:
        """(chosen, rejected) pairs in the consensus order, leaving out ties (margin 0)."""
        place = {c: p for p, c in enumerate(self.order)}
        pairs = sorted(combinations(self.order, 2), key=lambda pair: (place[pair[0]], place[pair[1]]))
        return [(a, b) for a, b in pairs if self.margins[(a, b)] != 0]


def task_consensus(*, task: Task, rankings: list[Ranking]) -> Consensus | None:
    """The task's consensus from its counted rankings; None when not rankable or unranked."""
    ordered = [r.order for r in rankings if r.rankable]
    if not ordered or (len(rankings) - len(ordered)) * 2 >= len(rankings):
        return None
    if task.is_gold:
        order = task.gold_order
        return Consensus(order, {(a, b): 1 for a, b in combinations(order, 2)}, len(ordered))
    margins = defaultdict(int)
    for ranking in ordered:
        for a, b in combinations(ranking, 2):
            margins[(a, b)] += 1
            margins[(b, a)] -= 1
    return Consensus(ranked_pairs(ordered), dict(margins), len(ordered))


# --- quality ---------------------------------------------------------------------------------------------


@dataclass
class LabelerQuality:
    labeler_id: int
    username: str
    rankings: int = 0
    not_rankable: int = 0
    seconds_median: float | None = None
    tau: float | None = None
    gold_accuracy: float | None = None
    gold_tasks: int = 0
    excluded: bool = False
    flagged: bool = False


@dataclass
class QualityReport:
    alpha: float | None
    kappas: list = field(default_factory=list)  # [(username_a, username_b, κ, shared items)]
    labelers: list = field(default_factory=list)
    tasks: int = 0
    tasks_complete: int = 0
    gold_tasks: int = 0  # with a known order
    gold_awaiting: int = 0  # sampled as gold, still without an order
    rankings: int = 0
    tau_threshold: float = TAU_THRESHOLD
    gold_threshold: float = GOLD_THRESHOLD


def _pair_labels(ranking: list[int]) -> dict:
    place = {c: p for p, c in enumerate(ranking)}
    return {(i, j): place[i] < place[j] for i, j in combinations(sorted(ranking), 2)}


def _median(values: list[int]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    middle = len(values) // 2
    return float(values[middle]) if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def quality_report(*, task_set: TaskSet, tau_threshold: float = TAU_THRESHOLD) -> QualityReport:
    """Agreement, gold accuracy and τ per labeler, over every labeler (excluded ones shown, not counted)."""
    from django.contrib.auth import get_user_model

    excluded = excluded_labeler_ids(task_set=task_set)
    tasks = {t.pk: t for t in Task.objects.filter(task_set=task_set)}
    all_rankings = list(Ranking.objects.filter(task__task_set=task_set).order_by("pk"))
    counted = defaultdict(list)
    for ranking in all_rankings:
        if ranking.labeler_id not in excluded:
            counted[ranking.task_id].append(ranking)

    users = get_user_model().objects.filter(pk__in={r.labeler_id for r in all_rankings})
    names = dict(users.values_list("pk", "username"))
    people = {pk: LabelerQuality(pk, names[pk], excluded=pk in excluded) for pk in sorted(names, key=names.get)}
    labels = defaultdict(dict)  # labeler -> {(task, i, j): bool}
    taus, gold_hits, seconds = defaultdict(list), defaultdict(lambda: [0, 0]), defaultdict(list)
    for ranking in all_rankings:
        person = people[ranking.labeler_id]
        person.rankings += 1
        seconds[ranking.labeler_id].append(ranking.seconds_spent)
        if not ranking.rankable:
            person.not_rankable += 1
            continue
        task = tasks[ranking.task_id]
        for (i, j), above in _pair_labels(ranking.order).items():
            labels[ranking.labeler_id][(task.pk, i, j)] = above
        if task.is_gold:
            if ranking.labeler_id in task.gold_agreed_by:  # their own ranking made this gold order
                continue
            gold = _pair_labels(task.gold_order)
            mine = _pair_labels(ranking.order)
            gold_hits[ranking.labeler_id][0] += sum(mine[pair] == gold[pair] for pair in gold)
            gold_hits[ranking.labeler_id][1] += len(gold)
            person.gold_tasks += 1
            continue
        others = [r for r in counted.get(task.pk, []) if r.labeler_id != ranking.labeler_id]
        reference = task_consensus(task=task, rankings=others) if others else None
        if reference is not None and (pairs := reference.pairs()):
            taus[ranking.labeler_id].append(kendall_tau_b(ranking.order, pairs))
    for pk, person in people.items():
        person.seconds_median = _median(seconds[pk])
        person.tau = sum(taus[pk]) / len(taus[pk]) if taus[pk] else None
        hits, total = gold_hits[pk]
        person.gold_accuracy = hits / total if total else None
        person.flagged = (person.tau is not None and person.tau < tau_threshold) or (
            person.gold_accuracy is not None and person.gold_accuracy < GOLD_THRESHOLD
        )

    raters = [pk for pk in people if pk not in excluded and labels[pk]]
    items = sorted({item for pk in raters for item in labels[pk]}, key=str)
    alpha = None
    if raters and items:
        try:
            alpha = krippendorff_alpha_nominal([[labels[pk].get(item) for item in items] for pk in raters])
        except ValueError:  # no item labelled twice yet
            alpha = None
    kappas = []
    for a, b in combinations(raters, 2):
        shared = sorted(labels[a].keys() & labels[b].keys(), key=str)
        if shared:
            kappa = cohen_kappa([labels[a][i] for i in shared], [labels[b][i] for i in shared])
            kappas.append((names[a], names[b], kappa, len(shared)))
    complete = sum(1 for tid, rs in counted.items() if len(rs) >= task_set.rankings_per_task)
    return QualityReport(
        alpha=alpha,
        kappas=kappas,
        labelers=list(people.values()),
        tasks=len(tasks),
        tasks_complete=complete,
        gold_tasks=sum(1 for t in tasks.values() if t.is_gold),
        gold_awaiting=sum(1 for t in tasks.values() if t.gold_sampled and not t.is_gold),
        rankings=len(all_rankings),
        tau_threshold=tau_threshold,
    )


def quality_chart_data(*, report: QualityReport) -> dict:
    """What the admin page's charts draw (read by static/js/labeling.js from a JSON script element)."""
    return {
        "labelers": [p.username for p in report.labelers],
        "tau": [p.tau for p in report.labelers],
        "gold": [p.gold_accuracy for p in report.labelers],
        "flagged": [p.flagged for p in report.labelers],
        "tau_threshold": report.tau_threshold,
        "kappa_labels": [f"{a} · {b}" for a, b, _, _ in report.kappas],
        "kappas": [k for _, _, k, _ in report.kappas],
    }


# --- exports ---------------------------------------------------------------------------------------------


def prompt_split(*, prompt: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def preference_pairs(*, task_set: TaskSet) -> list[PreferencePair]:
    """Every (chosen, rejected) pair of every task's consensus, tasks in creation order."""
    by_task = counted_rankings(task_set=task_set)
    texts = defaultdict(dict)
    for candidate in Candidate.objects.filter(task__task_set=task_set).only("task_id", "index", "text"):
        texts[candidate.task_id][candidate.index] = candidate.text
    pairs = []
    for task in Task.objects.filter(task_set=task_set, pk__in=by_task.keys()).order_by("created_at", "id"):
        consensus = task_consensus(task=task, rankings=by_task[task.pk])
        if consensus is None:
            continue
        for chosen, rejected in consensus.pairs():
            pair = PreferencePair(task.prompt, texts[task.pk][chosen], texts[task.pk][rejected])
            if _teaches(pair):
                pairs.append(pair)
    return pairs


def _teaches(pair: PreferencePair) -> bool:
    chosen, rejected = (unicode_clean(text).text.strip() for text in (pair.chosen, pair.rejected))
    return bool(chosen and rejected) and chosen != rejected


def _hh_transcript(prompt: str, answer: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {answer}"


def _kto_rows(pairs: list[PreferencePair]) -> list[dict]:
    wins, losses, order = defaultdict(int), defaultdict(int), {}
    for pair in pairs:
        for key, table in (((pair.prompt, pair.chosen), wins), ((pair.prompt, pair.rejected), losses)):
            table[key] += 1
            order.setdefault(key, len(order))
    rows = []
    for prompt, completion in sorted(order, key=order.get):
        key = (prompt, completion)
        if wins[key] and not losses[key]:
            label = True
        elif losses[key] and not wins[key]:
            label = False
        else:
            continue
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": completion}],
                "label": label,
            }
        )
    return rows


def export_rows(
    *, task_set: TaskSet, export_format: str, split: str = "all", test_fraction: float = DEFAULT_TEST_FRACTION
) -> list[dict]:
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {export_format!r}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}.")
    pairs = [
        p
        for p in preference_pairs(task_set=task_set)
        if split == "all" or prompt_split(prompt=p.prompt, test_fraction=test_fraction) == split
    ]
    if export_format == "kto":
        return _kto_rows(pairs)
    if export_format == "hh":
        return [
            {"chosen": _hh_transcript(p.prompt, p.chosen), "rejected": _hh_transcript(p.prompt, p.rejected)}
            for p in pairs
        ]
    return [
        {
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def export_jsonl(**kwargs) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in export_rows(**kwargs))
