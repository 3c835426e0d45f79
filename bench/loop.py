"""The learning loop, end to end, with the real model: python -m bench.loop.

What it runs, all through the product's own services, against an embedded Postgres and Redis under
var/bench/loop, a real inference server (SmolLM2-135M-Instruct, q4, with LoRA banks) and a real Celery worker
(the `finetune` queue trains; on success the job hot-loads the adapter and the loop's hook makes the draft):

1. An owner's assistant (v1, the base model, answers up to `max_tokens` tokens).
2. Training prompts in task sets with `candidates` candidates each from v1, at CANDIDATE_TEMPERATURE
   (`task_set_create`, then `candidates_generate`, several task sets at once so the engine batches prompts).
3. Stand-in labelers (bench/standin.py's judge) claim every task and submit its ranking (`task_claim_next`,
   `ranking_submit`): labeling consensus, never rows written by hand.
4. The flow: `loop_gather` (count and scan findings), then `loop_improve_start` (dataset version, DPO job),
   then the worker trains; the job's success makes the draft v2 (`parent` = v1).
5. Held-out prompts (other topics than the training prompts) in task sets with answers from v1 and the draft
   v2 (`held_out_samples` each, with the versions' own sampling settings, as users would get them), and the
   judge compares every v2 answer with every v1 answer of the same prompt. The win rate is over prompts (a
   prompt's score is the mean of its comparisons, a tie counts half); its 95% interval is a percentile
   bootstrap over prompts (BOOTSTRAP_ROUNDS resamples).

Writes bench/results_loop.md (and prints it): the win rate and interval, the wall time of each phase and of
the whole loop, the seed, and the machine's load. LOOP_SEED (default 0) seeds the task sets (and so the
engine's sampling), the prompt split and the bootstrap; LOOP_HELD_OUT_SAMPLES (default 2) sets the answers per
version per held-out prompt.

`loop_bench_run` is also what tests/loop/test_loop_slow.py runs, at a small scale.
"""

import os
import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("ATELIER_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "bench" / "loop"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

RESULTS = Path(__file__).resolve().parent / "results_loop.md"
TOPICS = (
    "photosynthesis", "the water cycle", "compound interest", "black holes", "the French Revolution", "vaccines",
    "machine learning", "climate change", "the stock market", "volcanoes", "the immune system", "inflation",
    "recycling", "electric cars", "the internet", "democracy", "earthquakes", "gravity", "the moon landing",
    "coffee", "sleep", "meditation", "exercise", "healthy eating", "time management", "public speaking",
    "learning a language", "saving money", "writing a resume", "job interviews", "gardening", "baking bread",
    "bees", "the ocean tides", "rainbows", "solar panels", "batteries", "the human heart", "DNA", "antibiotics",
    "the Roman Empire", "the printing press", "chess", "jazz", "photography", "the Olympics", "coral reefs",
    "deserts", "rain forests", "glaciers",
)  # fmt: skip
TEMPLATES = (
    "Explain {topic} to a beginner.",
    "What should I know about {topic}?",
    "Tell me about {topic}.",
    "Why does {topic} matter?",
)
BOOTSTRAP_ROUNDS = 2000
CANDIDATE_TEMPERATURE = 1.0
TARGET_WALL_S = 15 * 60


@dataclass(frozen=True)
class LoopBenchConfig:
    # × C(candidates, 2) pairs at most: 100 pairs from 100 prompts. 34 prompts × 3 candidates (102 pairs, three
    # from each prompt, one of them between two near-equal answers) moved the draft less: 58.8% [49.4%, 68.1%].
    train_prompts: int = 100
    candidates: int = 2
    held_out_prompts: int = 40
    held_out_samples: int = 2  # answers per version per held-out prompt: 4 comparisons each narrow the interval
    max_tokens: int = 128
    seed: int = 0
    parallel_sets: int = 4  # task sets generated at once


@dataclass
class LoopBenchResult:
    pairs: int
    by_source: dict
    findings: int
    high_findings: int
    wins: list[float]  # per held-out prompt: the draft's mean score against its parent
    win_rate: float
    interval: tuple[float, float]
    phases: dict[str, float] = field(default_factory=dict)  # seconds
    job: object = None
    draft: object = None
    parent: object = None
    words: dict = field(default_factory=dict)  # mean words of held-out answers: {"parent", "draft"}


def prompt_split(*, seed: int, train: int, held_out: int) -> tuple[list[str], list[str]]:
    """Training and held-out prompts on different topics (held-out topics are never trained on)."""
    topics = list(TOPICS)
    random.Random(seed).shuffle(topics)  # noqa: S311 (a reproducible split, not a secret)
    held_topics = topics[: -(-held_out // len(TEMPLATES))]
    train_topics = topics[len(held_topics) :]
    held = [t.format(topic=topic) for topic in held_topics for t in TEMPLATES][:held_out]
    pool = [t.format(topic=topic) for topic in train_topics for t in TEMPLATES]
    random.Random(seed + 1).shuffle(pool)  # noqa: S311
    if train > len(pool):
        raise ValueError(f"At most {len(pool)} training prompts with {held_out} held out.")
    return pool[:train], held


def _chunks(items: list, parts: int) -> list[list]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def task_sets_generate(
    *,
    name: str,
    admin,
    prompts: list[str],
    versions: list,
    candidates: int,
    seed: int,
    parallel: int,
    sampling: dict | None = None,
) -> list:
    """Task sets of `prompts` with candidates from `versions`, generated through the labeling services, several
    sets at once (each generation sends one prompt at a time; parallel sets let the engine batch)."""
    from django.db import connection

    from apps.labeling.models import TaskSet
    from apps.labeling.services import PromptInput, candidates_generate, task_set_create
    from bench.standin import GUIDELINE

    task_sets = [
        task_set_create(
            name=f"{name} {i + 1}",
            created_by=admin,
            prompts=[PromptInput(text, "typed", admin.pk) for text in chunk],
            versions=versions,
            candidates_per_task=candidates,
            rankings_per_task=1,
            sampling=sampling,
            guideline_text=GUIDELINE,
            seed=seed + i,
        )
        for i, chunk in enumerate(_chunks(prompts, parallel))
    ]

    def generate(task_set_id: int) -> str:
        try:
            return candidates_generate(task_set_id=task_set_id)
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(len(task_sets)) as pool:
        statuses = list(pool.map(generate, [t.pk for t in task_sets]))
    failed = [t for t, s in zip(task_sets, statuses, strict=True) if s != TaskSet.Status.READY]
    if failed:
        raise RuntimeError(f"Candidate generation failed: {TaskSet.objects.get(pk=failed[0].pk).error}")
    return task_sets


def stand_in_rank(*, task_sets: list, labelers: list) -> int:
    """Every task ranked by the stand-in judge, through the labelers' claim queue; returns the rankings made."""
    from apps.labeling.services import ranking_submit, task_claim_next
    from bench.standin import judge_rank

    made = 0
    for task_set in task_sets:
        for labeler in labelers:
            while (claim := task_claim_next(task_set=task_set, labeler=labeler)) is not None:
                texts = dict(claim.task.candidates.values_list("index", "text"))
                order = judge_rank(answers=[texts[i] for i in range(len(texts))])
                ranking_submit(task=claim.task, labeler=labeler, order=order, confirm_presented=True)
                made += 1
    return made


def held_out_wins(*, task_sets: list, parent, draft) -> tuple[list[float], dict]:
    """Per held-out prompt, the draft's mean judge score against the parent's answers (1 win, 0.5 tie, 0 loss),
    and the mean words of each version's answers."""
    from apps.labeling.models import Candidate
    from bench.standin import judge_compare

    by_task: dict = {}
    for task_id, version_id, text in Candidate.objects.filter(task__task_set__in=task_sets).values_list(
        "task_id", "version_id", "text"
    ):
        by_task.setdefault(task_id, {}).setdefault(version_id, []).append(text)
    wins, words = [], {"parent": [], "draft": []}
    for answers in by_task.values():
        mine, theirs = answers.get(draft.pk, []), answers.get(parent.pk, [])
        words["draft"] += [len(a.split()) for a in mine]
        words["parent"] += [len(a.split()) for a in theirs]
        wins.append(statistics.fmean(judge_compare(a, b) for a in mine for b in theirs))
    return wins, {k: statistics.fmean(v) for k, v in words.items()}


def bootstrap_interval(values: list[float], *, seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float]:
    """The percentile bootstrap's 95% interval of the mean of `values` (resampled with replacement)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible bootstrap)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def job_wait(job_id: int, *, timeout: float, on_progress: Callable[[str], None] = lambda message: None):
    """The job once it has ended (the worker trains it); raises if it does not end in `timeout` seconds."""
    from apps.finetune.models import FineTuneJob

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        job = FineTuneJob.objects.get(pk=job_id)
        if job.ended:
            return job
        if (job.status, job.step) != last:
            last = (job.status, job.step)
            on_progress(f"job {job.pk}: {job.status}, step {job.step}/{job.total_steps}")
        time.sleep(1)
    raise TimeoutError(f"The fine-tune job {job_id} did not end within {timeout:.0f} s.")


def loop_bench_run(
    *, config: LoopBenchConfig, owner, admin, labelers: list, assistant, say: Callable[[str], None] = print
) -> LoopBenchResult:
    """The whole loop (see the module docstring) for `assistant`'s current version, timed by phase."""
    from apps.loop.models import LoopRun
    from apps.loop.selectors import PairFilters, loop_gather
    from apps.loop.services import loop_improve_start

    phases = {}
    train, held = prompt_split(seed=config.seed, train=config.train_prompts, held_out=config.held_out_prompts)
    parent = assistant.current_version

    started = time.perf_counter()
    say(f"generating {config.candidates} candidates for each of {len(train)} training prompts")
    train_sets = task_sets_generate(
        name="Loop training",
        admin=admin,
        prompts=train,
        versions=[parent],
        candidates=config.candidates,
        seed=config.seed,
        parallel=config.parallel_sets,
        sampling={"temperature": CANDIDATE_TEMPERATURE},  # varied candidates to rank
    )
    phases["training candidates"] = time.perf_counter() - started

    mark = time.perf_counter()
    rankings = stand_in_rank(task_sets=train_sets, labelers=labelers)
    phases["stand-in rankings"] = time.perf_counter() - mark
    say(f"{rankings} rankings submitted")

    mark = time.perf_counter()
    gathering = loop_gather(assistant=assistant, filters=PairFilters())
    run = loop_improve_start(assistant=assistant, actor=owner, filters=PairFilters())
    phases["gather, scan, dataset, queue"] = time.perf_counter() - mark
    say(f"{len(gathering.pairs)} pairs, {len(gathering.findings)} findings; job {run.job_id} queued")

    mark = time.perf_counter()
    job = job_wait(run.job_id, timeout=3600, on_progress=say)
    if job.status != "succeeded":
        raise RuntimeError(f"The fine-tune job {job.pk} ended {job.status}: {job.message}")
    run = LoopRun.objects.select_related("draft").get(pk=run.pk)
    deadline = time.monotonic() + 60
    while run.draft is None and time.monotonic() < deadline:  # the hook runs as the job's last step
        time.sleep(0.5)
        run = LoopRun.objects.select_related("draft").get(pk=run.pk)
    if run.draft is None:
        raise RuntimeError("The job succeeded but no draft version was made.")
    draft = run.draft
    phases["DPO job (worker)"] = time.perf_counter() - mark
    say(f"draft v{draft.number} (parent v{parent.number}) with adapter {draft.adapter}")

    mark = time.perf_counter()
    held_sets = task_sets_generate(
        name="Loop held-out",
        admin=admin,
        prompts=held,
        versions=[parent, draft],
        candidates=2 * config.held_out_samples,
        seed=config.seed + 1000,
        parallel=config.parallel_sets,
    )
    wins, words = held_out_wins(task_sets=held_sets, parent=parent, draft=draft)
    phases["held-out answers and judging"] = time.perf_counter() - mark
    phases["whole loop"] = time.perf_counter() - started
    return LoopBenchResult(
        pairs=len(gathering.pairs),
        by_source=gathering.by_source,
        findings=len(gathering.findings),
        high_findings=gathering.high_findings,
        wins=wins,
        win_rate=statistics.fmean(wins),
        interval=bootstrap_interval(wins, seed=config.seed),
        phases=phases,
        job=job,
        draft=draft,
        parent=parent,
        words=words,
    )


def _report(result: LoopBenchResult, config: LoopBenchConfig, *, load_start: float, foreign_cpu: float) -> str:
    from apps.loop.selectors import loop_training_settings
    from bench.run import cpu_model
    from bench.standin import MAX_WORDS, OVERRUN_WORDS, SUMMARY_WORDS

    settings = loop_training_settings(pairs=result.pairs)
    low, high = result.interval
    whole = result.phases["whole loop"]
    lines = [
        "# The learning loop: rankings → DPO → draft version, measured on held-out prompts",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.loop`. {cpu_model()}, {os.cpu_count()} CPUs. "
        f"SmolLM2-135M-Instruct (q4 served, fp32 trained), answers up to {config.max_tokens} tokens, seed "
        f"{config.seed}.",
        "",
        "## Headline",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| draft v{result.draft.number}'s win rate against its parent v{result.parent.number}, held-out prompts "
        f"(stand-in judge) | {result.win_rate:.1%}, 95% interval [{low:.1%}, {high:.1%}] over "
        f"{len(result.wins)} prompts | lower bound > 50%: **{'MET' if low > 0.5 else 'NOT MET'}** |",
        f"| whole loop, {result.pairs} pairs, candidate generation included | {whole:.0f} s | "
        f"< {TARGET_WALL_S} s: **{'MET' if whole < TARGET_WALL_S else 'NOT MET'}** |",
        "",
        "## Phases",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in result.phases.items()],
        "",
        "## What ran",
        "",
        f"- Training: {config.train_prompts} prompts × {config.candidates} candidates from v1 (temperature "
        f"{CANDIDATE_TEMPERATURE}), "
        f"ranked by stand-in labelers through the claim queue; {result.pairs} consensus pairs "
        f"({result.by_source}), {result.findings} scan finding(s), {result.high_findings} high.",
        f"- DPO job {result.job.pk} with the loop's defaults for {result.pairs} pairs: {settings.epochs} epoch(s), "
        f"learning rate {settings.learning_rate}, batch {settings.batch_size}, beta {settings.beta}, LoRA rank "
        f"{settings.lora.rank} on {len(settings.lora.target_modules)} modules.",
        f"- Held-out: {config.held_out_prompts} prompts on topics never trained on, "
        f"{config.held_out_samples} answer(s) per version per prompt with the versions' own sampling (temperature "
        f"{result.parent.temperature}, top-p {result.parent.top_p}); every draft answer judged "
        f"against every parent answer of its prompt; bootstrap over prompts, {BOOTSTRAP_ROUNDS} rounds, seed "
        f"{config.seed}.",
        f"- Mean words per held-out answer: parent {result.words['parent']:.1f}, draft {result.words['draft']:.1f}.",
        f"- The judge (bench/standin.py): finished (ends a sentence) + one-line summary first (≤ {SUMMARY_WORDS} "
        f"words) − (words − {MAX_WORDS}) / {OVERRUN_WORDS} past {MAX_WORDS} words; ties broken by fewer words.",
        "",
        f"Load average when the bench started: {load_start:.2f}; during its {whole:.0f} s other processes used "
        f"{foreign_cpu:.0f} CPU-seconds of this machine's {os.cpu_count()} cores.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    import subprocess
    import sys

    from config import embedded

    config = LoopBenchConfig(
        seed=int(os.environ.get("LOOP_SEED", 0)),
        held_out_samples=int(os.environ.get("LOOP_HELD_OUT_SAMPLES", LoopBenchConfig.held_out_samples)),
    )
    with embedded.running_services():
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from apps.accounts.models import Role
        from apps.accounts.services import user_create
        from apps.assistants.selectors import chat_model_default
        from apps.assistants.services import AssistantConfig, assistant_create
        from apps.registry.services import base_models_bootstrap
        from bench.run import cpu_snapshot, say
        from config.celery import worker_argv
        from tests.conftest import database_url, free_port, wait_for_http

        call_command("migrate", verbosity=0)
        base_models_bootstrap(progress=lambda spec, message, fraction: None)
        var = Path(os.environ["ATELIER_VAR_DIR"])
        port = free_port()
        env = {**os.environ, "INFERENCE_MAX_SEQS": "16", "INFERENCE_CONTEXT": "1024", "INFERENCE_API_KEY": ""}
        settings.INFERENCE_URL = f"http://127.0.0.1:{port}"
        server_argv = [sys.executable, "-m", "inference.server", "--port", str(port)]
        server_argv += ["--models-root", str(settings.MODELS_DIR)]
        from django.db import connection

        worker_env = {
            **env,
            "INFERENCE_URL": settings.INFERENCE_URL,
            "DATABASE_URL": database_url(connection.settings_dict),
            "REDIS_URL": settings.REDIS_URL,
        }
        with (
            open(var / "inference.log", "w") as server_log,
            open(var / "worker.log", "w") as worker_log,
        ):
            server = subprocess.Popen(server_argv, env=env, stdout=server_log, stderr=subprocess.STDOUT)
            worker = subprocess.Popen(
                worker_argv(concurrency=1, name="bench-loop@%h"),
                env=worker_env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for_http(f"{settings.INFERENCE_URL}/health", server, timeout=180, what="the inference server")
                stamp = datetime.now(UTC).strftime("%H%M%S")
                owner = user_create(username=f"owner-{stamp}", email=f"owner-{stamp}@example.com", password="x" * 16)
                admin = user_create(username=f"admin-{stamp}", email=f"admin-{stamp}@example.com", password="x" * 16)
                admin.role = Role.ADMIN
                admin.save()
                labelers = []
                for i in range(2):
                    person = user_create(
                        username=f"standin-{i}-{stamp}", email=f"s{i}-{stamp}@example.com", password="x" * 16
                    )
                    person.role = Role.LABELER
                    person.save()
                    labelers.append(person)
                assistant = assistant_create(
                    owner=owner,
                    config=AssistantConfig(
                        name=f"Brief {stamp}", base_model=chat_model_default(), max_tokens=config.max_tokens
                    ),
                )
                load_start = os.getloadavg()[0]
                busy_before, _, mine_before = cpu_snapshot()
                result = loop_bench_run(
                    config=config, owner=owner, admin=admin, labelers=labelers, assistant=assistant, say=say
                )
            finally:
                for process in (worker, server):
                    process.terminate()
                for process in (worker, server):
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        busy_after, _, mine_after = cpu_snapshot()
        foreign = max(0.0, (busy_after - busy_before) - (mine_after - mine_before))
        text = _report(result, config, load_start=load_start, foreign_cpu=foreign)
        RESULTS.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
