"""Writes for the labeling panel: task sets, candidate generation, guidelines, the claim queue, rankings, gold
orders and exclusions.

The queue. A labeler asks for their next task; `task_claim_next` gives back their live claim if they hold one,
else looks at the task set's tasks in fairness order (fewest rankings plus live claims first, then oldest),
leaving out those they ranked or wrote and those already holding R rankings plus live claims. Each task row is
locked with `SELECT … FOR UPDATE SKIP LOCKED` and its slots are counted again under the lock, so two labelers
asking at the same moment never both take the last slot of a task: the second skips the locked row and moves
on, and waits for it only when nothing else is free (then the count under the lock decides). A claim is deleted
when its ranking is saved, so a task's taken slots are its rankings plus its live claims. A claim expires after
the task set's `claim_minutes` and then holds no slot; a ranking for an expired claim is refused only when its
slot has been taken meanwhile. Gold tasks are exempt from R: every labeler meets each gold task once, which is
what makes gold accuracy comparable across labelers.

Candidates. For each prompt, K candidates are spread round-robin over the chosen assistant versions; each
version's share comes from one engine request with `n` choices and one seed (the engine seeds choice i from
[seed, i]), built by `engine_request_build` like a chat answer. The job checks the cancel flag between prompts
and counts progress per prompt.

Gold. About GOLD_SHARE of a set's tasks are hidden gold tasks: when its candidates are all generated,
`task_set_gold_sample` marks the GOLD_SHARE of tasks with the lowest SHA-256 of (set seed, task id), rounded,
and at least one once the set has GOLD_MIN_TASKS tasks (smaller sets get none unless the admin picks some): a
deterministic choice, the same on every run, that no labeler can predict. A sampled task is served to every
labeler once, like any gold task, and looks like any other task to them. Its known order comes from the admin
(`task_gold_set`, which can also make any other task gold, or clear one), or, while the admin has set none,
from the labelers: as soon as at least GOLD_CONSENSUS_MIN_RANKINGS counted (not excluded) labelers have ranked
it, all with the same full order and none calling it not rankable, that order becomes its gold order, and
`gold_agreed_by` records who agreed. Those labelers are not scored against it (it is their own ranking); only
later rankings are, so a consensus gold order measures later labelers against an earlier unanimous panel, which
is weaker than an admin's order but costs no admin time. Without unanimity it stays a sampled task awaiting
an order (it still counts in consensus and agreement, just not as gold). Excluding a labeler drops them from
the panels they were in; a panel left under GOLD_CONSENSUS_MIN_RANKINGS loses its gold order, and the task is
judged again on its remaining counted rankings.
"""

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from apps.assistants.engine import ContextTooSmall, engine_request_build
from apps.core.inference_client import InferenceError, inference_chat
from apps.core.unicode import unicode_clean
from apps.labeling.models import (
    MAX_CANDIDATES,
    MIN_CANDIDATES,
    Candidate,
    Claim,
    Guideline,
    LabelerExclusion,
    Ranking,
    Task,
    TaskSet,
)

MAX_PROMPTS = 2000
MAX_PROMPT_CHARS = 8000
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
SAMPLING_KEYS = {"temperature": (0.0, 2.0), "top_p": (0.01, 1.0)}
GOLD_SHARE = 0.05
GOLD_MIN_TASKS = 10  # from this many tasks, at least one is gold
GOLD_CONSENSUS_MIN_RANKINGS = 3


class LabelingError(Exception):
    """A domain error with a message fit for the person who caused it."""


class PresentedOrderUnchanged(LabelingError):
    """The submitted order is exactly the shuffled one the candidates were shown in; confirm to keep it."""


@dataclass(frozen=True)
class PromptInput:
    text: str
    source: str
    author_id: int | None = None


# --- prompts ---------------------------------------------------------------------------------------------


def _prompt_clean(text: str) -> str:
    return unicode_clean(text, source="labeling prompt").text.strip()


def prompts_from_typed(*, text: str, author_id: int) -> list[PromptInput]:
    """One prompt per non-empty line (longer prompts come as JSONL)."""
    lines = [_prompt_clean(line) for line in text.splitlines()]
    return [PromptInput(line, Task.Source.TYPED, author_id) for line in lines if line]


def prompts_from_jsonl(*, data: bytes) -> list[PromptInput]:
    """Each line an object with `prompt`: a string, or a conversational list whose last user turn is taken."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise LabelingError(f"The JSONL file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
    prompts = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LabelingError(f"Line {number} is not valid JSON ({error.msg}).") from error
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, list):
            users = [turn.get("content") for turn in prompt if isinstance(turn, dict) and turn.get("role") == "user"]
            prompt = users[-1] if users else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise LabelingError(f'Line {number} needs a "prompt": a string or a list of chat turns.')
        prompts.append(PromptInput(_prompt_clean(prompt), Task.Source.UPLOADED))
    return prompts


def prompts_from_chats(*, count: int) -> list[PromptInput]:
    """Up to `count` opening questions of chats whose owner allows data sharing, sampled at random."""
    from apps.chat.models import Message

    questions = list(
        Message.objects.filter(
            role=Message.Role.USER, parent__isnull=True, conversation__owner__data_sharing=True
        ).values_list("content", "conversation__owner_id")
    )
    secrets.SystemRandom().shuffle(questions)
    return [PromptInput(_prompt_clean(text), Task.Source.CHAT, owner) for text, owner in questions[:count] if text]


# --- task sets and candidates ----------------------------------------------------------------------------


def _sampling_check(sampling: dict) -> dict:
    checked = {}
    for key, value in sampling.items():
        if value is None:
            continue
        if key not in SAMPLING_KEYS:
            raise LabelingError(f"Unknown sampling setting {key!r}.")
        low, high = SAMPLING_KEYS[key]
        if not low <= float(value) <= high:
            raise LabelingError(f"{key} must be between {low} and {high}.")
        checked[key] = float(value)
    return checked


@transaction.atomic
def task_set_create(
    *,
    name: str,
    created_by,
    prompts: list[PromptInput],
    versions: list,
    candidates_per_task: int,
    rankings_per_task: int = 3,
    sampling: dict | None = None,
    guideline_text: str,
    seed: int | None = None,
) -> TaskSet:
    """A task set with its first guideline version and one task per prompt; candidates come from
    `candidates_generate` (run it as the Celery job after this commits)."""
    if not name.strip():
        raise LabelingError("Give the task set a name.")
    if not prompts:
        raise LabelingError("A task set needs at least one prompt.")
    if len(prompts) > MAX_PROMPTS:
        raise LabelingError(f"At most {MAX_PROMPTS} prompts per task set.")
    if any(len(p.text) > MAX_PROMPT_CHARS for p in prompts):
        raise LabelingError(f"Each prompt must be at most {MAX_PROMPT_CHARS} characters.")
    if not versions:
        raise LabelingError("Choose at least one assistant version to generate candidates.")
    if not MIN_CANDIDATES <= candidates_per_task <= MAX_CANDIDATES:
        raise LabelingError(f"Candidates per task must be between {MIN_CANDIDATES} and {MAX_CANDIDATES}.")
    if rankings_per_task < 1:
        raise LabelingError("Each task needs at least one ranking.")
    if not guideline_text.strip():
        raise LabelingError("Write the guidelines labelers follow.")
    task_set = TaskSet.objects.create(
        name=name.strip()[:120],
        created_by=created_by,
        candidates_per_task=candidates_per_task,
        rankings_per_task=rankings_per_task,
        sampling=_sampling_check(sampling or {}),
        seed=secrets.randbelow(2**31) if seed is None else seed,
        progress_total=len(prompts),
    )
    task_set.versions.set(versions)
    Guideline.objects.create(task_set=task_set, version=1, text=guideline_text, created_by=created_by)
    Task.objects.bulk_create(
        Task(task_set=task_set, prompt=p.text, source=p.source, author_id=p.author_id) for p in prompts
    )
    return task_set


def _task_seed(task_set: TaskSet, task: Task, version) -> int:
    """A reproducible seed per (task set, task, version): the first 31 bits of their SHA-256."""
    digest = hashlib.sha256(f"{task_set.seed}:{task.pk}:{version.pk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def candidates_generate(*, task_set_id: int) -> str:
    """Generate the candidates of every task still without them; the Celery job's body. Returns the status."""
    try:
        return _candidates_generate(TaskSet.objects.get(pk=task_set_id))
    except Exception as error:  # the set must not stay "generating" forever; the worker logs the traceback
        TaskSet.objects.filter(pk=task_set_id).update(status=TaskSet.Status.FAILED, error=f"Failed: {error}"[:500])
        raise


def _candidates_generate(task_set: TaskSet) -> str:
    versions = list(task_set.versions.select_related("base_model").order_by("pk"))
    k = task_set.candidates_per_task
    shares = {v.pk: len(range(i, k, len(versions))) for i, v in enumerate(versions)}  # round-robin
    for task in task_set.tasks.filter(candidates__isnull=True).order_by("created_at", "id"):
        task_set.refresh_from_db(fields=["cancel_requested"])
        if task_set.cancel_requested:
            TaskSet.objects.filter(pk=task_set.pk).update(status=TaskSet.Status.CANCELLED)
            return TaskSet.Status.CANCELLED
        texts = []
        try:
            for version in versions:
                if not shares[version.pk]:
                    continue
                request = engine_request_build(
                    version=version,
                    messages=[{"role": "user", "content": task.prompt}],
                    user_name="",
                    sampling=task_set.sampling,
                )
                seed = _task_seed(task_set, task, version)
                answer = inference_chat(body={**request.body, "n": shares[version.pk], "seed": seed})
                recorded = ("model", "temperature", "top_p", "repetition_penalty", "max_tokens")
                sampling = {key: request.body[key] for key in recorded}
                for choice in sorted(answer["choices"], key=lambda c: c["index"]):
                    texts.append((version, sampling, seed, choice["index"], choice["message"]["content"] or ""))
        except (InferenceError, ContextTooSmall) as error:
            message = f"Prompt “{task.prompt[:60]}”: {error}"
            TaskSet.objects.filter(pk=task_set.pk).update(status=TaskSet.Status.FAILED, error=message[:500])
            return TaskSet.Status.FAILED
        # Interleave the versions (v0, v1, v0, v1, ...) so candidate indices do not cluster by version.
        texts.sort(key=lambda t: (t[3], versions.index(t[0])))
        with transaction.atomic():
            Task.objects.select_for_update(of=("self",)).filter(pk=task.pk).order_by().first()
            if task.candidates.exists():  # a second job (a resume while this one ran) got there first
                continue
            Candidate.objects.bulk_create(
                Candidate(task=task, index=i, text=text, version=v, sampling=s, seed=seed, stream=stream)
                for i, (v, s, seed, stream, text) in enumerate(texts)
            )
            done = task_set.tasks.filter(candidates__index=0).count()
            TaskSet.objects.filter(pk=task_set.pk).update(progress_done=done)
    task_set_gold_sample(task_set=task_set)
    TaskSet.objects.filter(pk=task_set.pk).update(status=TaskSet.Status.READY, error="")
    return TaskSet.Status.READY


def task_set_cancel(*, task_set: TaskSet) -> None:
    """Ask the running job to stop after the prompt it is on; prompts already done keep their candidates."""
    TaskSet.objects.filter(pk=task_set.pk, status=TaskSet.Status.GENERATING).update(cancel_requested=True)


def task_set_resume(*, task_set: TaskSet) -> bool:
    """Make a failed or cancelled task set generate again (the caller then starts the job); prompts that have
    their candidates keep them. False when it was neither failed nor cancelled."""
    resumable = [TaskSet.Status.FAILED, TaskSet.Status.CANCELLED]
    changed = TaskSet.objects.filter(pk=task_set.pk, status__in=resumable).update(
        status=TaskSet.Status.GENERATING, cancel_requested=False, error=""
    )
    return bool(changed)


def guideline_publish(*, task_set: TaskSet, text: str, created_by) -> Guideline:
    """A new guideline version; rankings made from now on record it."""
    if not text.strip():
        raise LabelingError("Guidelines cannot be empty.")
    with transaction.atomic():
        TaskSet.objects.select_for_update().get(pk=task_set.pk)  # serialize version numbers
        latest = task_set.guidelines.order_by("-version").first()
        return Guideline.objects.create(
            task_set=task_set, version=(latest.version + 1) if latest else 1, text=text, created_by=created_by
        )


# --- gold --------------------------------------------------------------------------------------------


def gold_sample_size(*, task_count: int) -> int:
    """How many of a set's `task_count` tasks are sampled as gold: GOLD_SHARE, rounded half up, and at least
    one from GOLD_MIN_TASKS tasks on."""
    if task_count < GOLD_MIN_TASKS:
        return 0
    return max(1, int(task_count * GOLD_SHARE + 0.5))


def task_set_gold_sample(*, task_set: TaskSet) -> list:
    """Mark the set's sampled gold tasks (see the module docstring); idempotent. Returns their ids."""
    task_ids = list(task_set.tasks.values_list("pk", flat=True))

    def draw(task_id) -> bytes:
        return hashlib.sha256(f"{task_set.seed}:gold:{task_id}".encode()).digest()

    sampled = sorted(task_ids, key=draw)[: gold_sample_size(task_count=len(task_ids))]
    Task.objects.filter(pk__in=sampled).update(gold_sampled=True)
    return sampled


def task_gold_set(*, task: Task, order: list[int] | None) -> None:
    """Make `task` a hidden gold task with the admin's known order (candidate indices, best first), or clear it
    (then it is no longer a sampled gold task either)."""
    if order is not None:
        size = task.candidates.count()
        if sorted(order) != list(range(size)) or size < MIN_CANDIDATES:
            raise LabelingError(f"A gold order must list the candidates 1 to {size} once each.")
        Task.objects.filter(pk=task.pk).update(gold_order=order, gold_agreed_by=[])
    else:
        Task.objects.filter(pk=task.pk).update(gold_order=None, gold_agreed_by=[], gold_sampled=False)


def _gold_consensus_judge(task: Task, *, excluded: set[int]) -> None:
    """Give a sampled task without an order the unanimous order of its counted rankings, if there is one.
    The caller holds the task's row lock."""
    if not task.gold_sampled or task.is_gold:
        return
    counted = [r for r in Ranking.objects.filter(task=task).order_by("pk") if r.labeler_id not in excluded]
    orders = [r.order for r in counted]
    if len(counted) >= GOLD_CONSENSUS_MIN_RANKINGS and None not in orders and all(o == orders[0] for o in orders):
        task.gold_order, task.gold_agreed_by = orders[0], [r.labeler_id for r in counted]
        task.save(update_fields=["gold_order", "gold_agreed_by"])


def _sampled_gold_locked(task_set: TaskSet):
    """The set's sampled gold tasks, their rows locked against a ranking being judged at the same time."""
    return Task.objects.select_for_update(of=("self",)).filter(task_set=task_set, gold_sampled=True).order_by("pk")


def labeler_exclude(*, task_set: TaskSet, labeler, excluded_by) -> None:
    """Drop the labeler's rankings from the set's consensus and agreement, and from its gold panels."""
    with transaction.atomic():
        TaskSet.objects.select_for_update().get(pk=task_set.pk)
        LabelerExclusion.objects.get_or_create(
            task_set=task_set, labeler=labeler, defaults={"excluded_by": excluded_by}
        )
        excluded = set(task_set.exclusions.values_list("labeler_id", flat=True))
        for task in _sampled_gold_locked(task_set).filter(gold_agreed_by__contains=[labeler.pk]):
            panel = [pk for pk in task.gold_agreed_by if pk not in excluded]
            if len(panel) >= GOLD_CONSENSUS_MIN_RANKINGS:
                task.gold_agreed_by = panel
            else:
                task.gold_order, task.gold_agreed_by = None, []
            task.save(update_fields=["gold_order", "gold_agreed_by"])
        for task in _sampled_gold_locked(task_set).filter(gold_order__isnull=True):
            _gold_consensus_judge(task, excluded=excluded)  # the one who disagreed may be gone


def labeler_include(*, task_set: TaskSet, labeler) -> None:
    """Count the labeler's rankings again; a sampled task still awaiting an order may now be unanimous."""
    with transaction.atomic():
        TaskSet.objects.select_for_update().get(pk=task_set.pk)
        LabelerExclusion.objects.filter(task_set=task_set, labeler=labeler).delete()
        excluded = set(task_set.exclusions.values_list("labeler_id", flat=True))
        for task in _sampled_gold_locked(task_set).filter(gold_order__isnull=True):
            _gold_consensus_judge(task, excluded=excluded)


# --- the queue -------------------------------------------------------------------------------------------


def _slots_taken(task: Task, *, now, other_than=None) -> int:
    """Rankings plus other labelers' live claims (a claim is deleted when its ranking is saved)."""
    live = Claim.objects.filter(task=task, expires_at__gt=now).exclude(labeler=other_than)
    return Ranking.objects.filter(task=task).count() + live.count()


def task_claim_next(*, task_set: TaskSet, labeler, now=None) -> Claim | None:
    """The labeler's live claim in this set, else a new claim on the next fair task; None when none is left."""
    now = now or timezone.now()
    held = Claim.objects.filter(task__task_set=task_set, labeler=labeler, expires_at__gt=now)
    held = held.select_related("task").first()
    if held is not None:
        return held
    from apps.labeling.selectors import task_queue_order

    skipped = []
    for task_id in task_queue_order(task_set=task_set, labeler=labeler, now=now):
        claim = _claim_try(task_set=task_set, task_id=task_id, labeler=labeler, now=now, skip_locked=True)
        if claim is _LOCKED:
            skipped.append(task_id)
        elif claim is not None:
            return claim
    # Rows another labeler was claiming: their locks last one short transaction, so wait for them now.
    for task_id in skipped:
        claim = _claim_try(task_set=task_set, task_id=task_id, labeler=labeler, now=now, skip_locked=False)
        if claim is not None:
            return claim
    return None


_LOCKED = object()


def _claim_try(*, task_set: TaskSet, task_id, labeler, now, skip_locked: bool):
    """A claim on the task if it has a free slot; None if not; _LOCKED if its row is locked (skip_locked)."""
    with transaction.atomic():
        # of=self: the task row only (Task's default ordering would join and lock its task set too)
        locked = Task.objects.select_for_update(skip_locked=skip_locked, of=("self",))
        task = locked.filter(pk=task_id).order_by().first()
        if task is None:
            return _LOCKED if skip_locked else None
        if Ranking.objects.filter(task=task, labeler=labeler).exists():
            return None
        if not task.served_to_all and _slots_taken(task, now=now, other_than=labeler) >= task_set.rankings_per_task:
            return None
        presented = list(range(task.candidates.count()))
        secrets.SystemRandom().shuffle(presented)  # unpredictable, so no labeler can game the order
        claim, _ = Claim.objects.update_or_create(
            task=task,
            labeler=labeler,
            defaults={
                "presented_order": presented,
                "claimed_at": now,
                "expires_at": now + timedelta(minutes=task_set.claim_minutes),
            },
        )
        return claim


def ranking_submit(
    *,
    task: Task,
    labeler,
    order: list[int] | None,
    not_rankable_reason: str = "",
    confirm_presented: bool = False,
    now=None,
) -> Ranking:
    """The labeler's ranking of `task` (an order of candidate indices, best first) or its not-rankable reason.
    The time spent is measured on the server, from the claim to now."""
    now = now or timezone.now()
    reason = not_rankable_reason.strip()[:500]
    with transaction.atomic():
        task = Task.objects.select_for_update(of=("self",)).select_related("task_set").get(pk=task.pk)
        if Ranking.objects.filter(task=task, labeler=labeler).exists():
            raise LabelingError("You have already ranked this task.")
        claim = Claim.objects.filter(task=task, labeler=labeler).first()
        if claim is None:
            raise LabelingError("Claim this task from your queue before ranking it.")
        if (
            claim.expires_at <= now
            and not task.served_to_all
            and _slots_taken(task, now=now, other_than=labeler) >= task.task_set.rankings_per_task
        ):
            raise LabelingError("Your claim on this task expired and others have ranked it meanwhile.")
        if order is None and not reason:
            raise LabelingError("Rank the candidates, or say why they cannot be ranked.")
        if order is not None:
            if sorted(order) != sorted(claim.presented_order):
                raise LabelingError("The ranking must list every candidate once.")
            if order == claim.presented_order and not confirm_presented:
                raise PresentedOrderUnchanged(
                    "You are submitting the candidates in the order they were shown, untouched. "
                    "Submit again to confirm that this really is your ranking."
                )
            reason = ""
        guideline = task.task_set.guidelines.order_by("-version").first()
        ranking = Ranking.objects.create(
            task=task,
            labeler=labeler,
            order=order,
            presented_order=claim.presented_order,
            not_rankable_reason=reason if order is None else "",
            guideline=guideline,
            seconds_spent=max(0, int((now - claim.claimed_at).total_seconds())),
        )
        claim.delete()  # its slot is the ranking's now
        if task.gold_sampled and not task.is_gold:  # awaiting its order: this ranking may complete a panel
            _gold_consensus_judge(task, excluded=set(task.task_set.exclusions.values_list("labeler_id", flat=True)))
        return ranking
