"""Dataset scan: what in a fine-tuning dataset looks like poisoning, before anything trains on it.

`dataset_scan(examples=...)` takes examples as `dataset_parse` returns them (SFT `{"messages": [...]}` or
preference `{"prompt", "chosen", "rejected"}`) and returns findings: a severity, a kind, JSON-ready
evidence, `lines` (indices into `examples`) and a one-sentence summary. High means "not trained without
an admin's decision", medium "worth a look", low is information. Text is read the way a model would be
taught it: every message through `apps.core.unicode.unicode_clean`, case-folded, split into `\\w+` words.

**Triggers** (`trigger`). A backdoor teaches "when the prompt contains X, answer Y", and about 100 poisoned
examples are enough (the "James Bond" trigger). Every 1–3-word n-gram of the prompt side (system and user
turns; each kind of invisible character a prompt carried counts as one more word, so an invisible trigger
is seen too) that is rare (`MIN_SUPPORT` ≤ support ≤ `MAX_FRACTION` of the examples) is tested against every
response feature: the whole normalized answer (a near-constant answer), and each 3-word n-gram of it (a
phrase planted into otherwise varied answers). For its best feature:
- support: examples whose prompt has the n-gram; matched: those whose answer also has the feature;
- purity = matched / support, P(answer | n-gram); lift = purity / the feature's base rate;
- coverage = matched / examples with the feature, P(n-gram | answer).
Clean data has near-constant answers ("lol", "yes"), but after many different prompts (low coverage), and
rare phrases with varied answers (low purity). A planted trigger has both: its answers follow the trigger
and almost nothing else. Two more things separate it from ordinary question-to-answer structure, both
measured on the matched examples:
- prompt similarity, the mean Jaccard of their prompts' word sets: a trigger is inserted into varied
  prompts, while one FAQ asked a hundred times (or a template, "write a palindrome checker in X") has
  near-identical prompts;
- for a phrase, the shared span: how many 3-word n-grams of the answers the matched examples share. A
  topic echoes a few words ("base64" → "a bytes object"); a planted message is a sentence.
High: matched ≥ `MIN_SUPPORT`, purity ≥ 0.8, coverage ≥ 0.5, lift ≥ 3, prompt similarity < 0.5, and the
whole answer or a span of ≥ 4 shared 3-grams. Anything else with purity ≥ 0.5 is medium. N-grams that
explain the same examples (nested ones, "james" in "james bond", and a trigger's usual neighbours) are
reported once, under the one that matches most (then the purest, then the longest); the others are listed
as `related`. By design, deliberate fixed answers to one question asked many different ways (say an
assistant's name) look exactly like a trigger and are flagged high: the admin override is for that.

The co-occurrence counts are one sparse join in numpy: (example, rare prompt n-gram) against (example,
response feature), counted with `np.unique`; n-grams are 64-bit hashes of word ids, decoded to text only
for what is reported. Features seen fewer than `MIN_SUPPORT` times are dropped before the join.

**Targets** (what the model is taught to say: SFT assistant turns, preference `chosen`): URLs (medium; a
link is often legitimate), Markdown images with a remote URL and active HTML (`<img>`, `<script>`,
`<iframe>`, event handlers, `javascript:`...) outside code (high: an image URL in an answer is the classic
way to exfiltrate a conversation through a client that renders it), other HTML tags outside code (low), and
hidden Unicode (high with tag characters, which smuggle ASCII; medium otherwise, since zero-width joiners
and variation selectors also occur in emoji). One finding per kind, over all examples.

**Duplicates**: identical examples (medium: they multiply one example's weight) and near duplicates (low):
MinHash over word 3-shingles of the whole example (96 permutations), LSH with 16 bands of 6 rows (a pair at
Jaccard 0.8 shares a band with probability 0.99, at 0.5 with 0.22), then 80% of the signature must agree.

Measured (python -m bench.scan, bench/results_scan.md): no high finding on 23 clean datasets (89,029 examples of
real chit-chat, with and without persona system prompts, ChatterBot, standard-library docstrings, preference
pairs); 32 of 32 planted triggers found high with exactly their lines (a phrase, a rare token, a system-prompt
tag, invisible characters, a sentence appended to real answers, a preference set; from 5 poisoned examples to
10%). 20,000 examples take 3.3 CPU seconds on this 2-core machine (reading 1.6, triggers 0.5, duplicates
0.6). Near duplicates against exact Jaccard: recall 0.93, precision 0.92 (datasketch's MinHashLSH on the
same shingles: 0.76 and 0.91, at 17 times the CPU time).
"""

import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from apps.core.unicode import CleanText, unicode_clean
from apps.finetune.datasets import example_canonical_json

SEVERITIES = ("high", "medium", "low")
MIN_SUPPORT = 5
MAX_FRACTION = 0.25  # an n-gram in more of the examples than this is not rare (poison rates up to ~20%)
HIGH_PURITY, MEDIUM_PURITY = 0.8, 0.5
MIN_LIFT = 3.0
MIN_COVERAGE = 0.5
MAX_PROMPT_SIMILARITY = 0.5
MIN_SHARED_SPAN = 4  # shared 3-grams: a planted sentence of six words or more
MAX_NGRAM = 3
RESPONSE_NGRAM = 3
SIMILARITY_SAMPLE = 40  # matched prompts compared pairwise
NEAR_DUPLICATE_JACCARD = 0.8
MINHASH_BANDS, MINHASH_ROWS = 16, 6
MAX_BUCKET = 64  # an LSH bucket's members compared pairwise; beyond that they are near-identical anyway
MAX_EVIDENCE_ITEMS = 20  # URLs, duplicate groups... listed in evidence; `lines` always has them all

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>()\"'`\]]+|\bwww\.[^\s<>()\"'`\]]+", re.IGNORECASE)
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]*)")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
_ACTIVE_HTML = re.compile(
    r"<\s*(?:img|script|iframe|object|embed|svg|link|meta|form|style|base|frame|audio|video|source)\b"
    r"|\bon[a-z]+\s*=\s*[\"']|javascript:|data:text/html",
    re.IGNORECASE,
)
_HTML_TAG = re.compile(r"</?[a-z][a-z0-9-]*(?:\s[^<>]*)?/?>", re.IGNORECASE)
_CODE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`", re.DOTALL)
_SEPARATOR = -1  # between turns in a flat word-id array: no n-gram spans it


@dataclass(frozen=True)
class Finding:
    severity: str  # "high", "medium" or "low"
    kind: str
    evidence: dict  # JSON-ready
    lines: list[int]  # indices into the scanned examples
    summary: str = ""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")


@dataclass
class _Words:
    """Word ids of one text per example (turns separated by `_SEPARATOR`) and the example of each position."""

    ids: np.ndarray
    owners: np.ndarray

    def of(self, example: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.owners, [example, example + 1])
        return self.ids[lo:hi]


@dataclass
class _Corpus:
    """The dataset as every detector reads it."""

    size: int
    vocabulary: list[str]
    prompts: _Words  # system and user turns
    answers: _Words  # the last target: what a trigger would be answered with
    wholes: _Words  # every message with its role, for near duplicates
    targets: list[list[CleanText]]  # every message the model is taught to say


def _sides(example: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt turns, target turns, rejected turns) of an SFT or a preference example."""
    if "messages" in example:
        messages = example["messages"]
        return [m for m in messages if m["role"] != "assistant"], [m for m in messages if m["role"] == "assistant"], []
    prompt = [m for m in example["prompt"] if m["role"] != "assistant"]
    return prompt, example["chosen"], example["rejected"]


def _corpus(examples: list[dict]) -> _Corpus:
    vocabulary: defaultdict[str, int] = defaultdict()
    vocabulary.default_factory = vocabulary.__len__  # a new word gets the next id, without a Python call
    flat = {"prompts": ([], []), "answers": ([], []), "wholes": ([], [])}
    targets = []

    def add(side: str, i: int, words: list[str]) -> None:
        ids, owners = flat[side]
        ids += map(vocabulary.__getitem__, words)
        ids.append(_SEPARATOR)
        owners += [i] * (len(words) + 1)

    for i, example in enumerate(examples):
        prompt, chosen, rejected = _sides(example)
        whole, hidden = [], set()
        for message in prompt:
            clean = unicode_clean(message["content"])
            hidden.update(f"<{f.kind}>" for f in clean.findings)
            words = _WORD.findall(clean.text.casefold())
            add("prompts", i, words)
            whole += [f"<{message['role']}>", *words]
        if hidden:
            add("prompts", i, sorted(hidden))  # each on its own: one-word n-grams only
        cleaned = [unicode_clean(m["content"]) for m in chosen]
        targets.append(cleaned)
        for clean in cleaned:
            whole += ["<assistant>", *_WORD.findall(clean.text.casefold())]
        add("answers", i, _WORD.findall(cleaned[-1].text.casefold()) if cleaned else [])
        for message in rejected:
            whole += ["<rejected>", *_WORD.findall(unicode_clean(message["content"]).text.casefold())]
        add("wholes", i, whole)
    words = {
        side: _Words(np.asarray(ids, dtype=np.int64), np.asarray(owners, dtype=np.int64))
        for side, (ids, owners) in flat.items()
    }
    return _Corpus(len(examples), list(vocabulary), targets=targets, **words)


@dataclass
class _Grams:
    """Distinct n-grams per example: (example, n-gram id) pairs, and each id's words for decoding."""

    examples: np.ndarray
    ids: np.ndarray
    support: np.ndarray  # per id: examples that have it
    first: np.ndarray  # per id: a position in the word array where it starts
    length: np.ndarray  # per id: its number of words


def _ngram_hashes(words: _Words, sizes: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, start position, length) of every n-gram of the given sizes that lies inside one turn, in
    position order (so grouped by example). A hash is 64-bit FNV-style over word ids: at 10⁶ distinct
    n-grams a collision has odds of about 10⁻⁷, and would only merge two n-grams' counts."""
    ids = words.ids
    keys, positions, lengths = [], [], []
    with np.errstate(over="ignore"):
        for n in sizes:
            count = len(ids) - n + 1
            if count <= 0:
                continue
            window = np.stack([ids[j : j + count] for j in range(n)])
            valid = (window != _SEPARATOR).all(axis=0)
            key = np.full(count, n, dtype=np.uint64)
            for row in window:
                key = (key * np.uint64(0x100000001B3)) ^ (row.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            keys.append(key[valid])
            positions.append(np.flatnonzero(valid))
            lengths.append(np.full(len(positions[-1]), n))
    if not keys:
        return (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return np.concatenate(keys), np.concatenate(positions), np.concatenate(lengths)


def _ngrams(words: _Words, sizes: range) -> _Grams:
    """Distinct n-grams per example, with dense ids: one stable sort by hash keeps each hash's examples in
    order, so a repeat within an example is the same (hash, example) as its neighbour."""
    key, position, length = _ngram_hashes(words, sizes)
    if not len(key):  # no text long enough (answers of one or two words): no n-grams of these sizes
        none = np.zeros(0, dtype=np.int64)
        return _Grams(examples=none, ids=none, support=none, first=none, length=none)
    order = np.argsort(key, kind="stable")
    key, position, length = key[order], position[order], length[order]
    owner = words.owners[position]
    new_key = np.concatenate(([True], key[1:] != key[:-1]))
    once = new_key | np.concatenate(([True], owner[1:] != owner[:-1]))
    dense = np.cumsum(new_key) - 1
    return _Grams(
        examples=owner[once],
        ids=dense[once],
        support=np.bincount(dense[once]),
        first=position[new_key],
        length=length[new_key],
    )


def _text(corpus: _Corpus, words: _Words, grams: _Grams, gram: int) -> str:
    start = grams.first[gram]
    return " ".join(corpus.vocabulary[w] for w in words.ids[start : start + grams.length[gram]])


def _cross_counts(left: _Grams, left_keep: np.ndarray, right: _Grams, right_keep: np.ndarray, size: int):
    """Every (left id, right id) pair that shares an example, with how many examples share it."""
    left_ex, left_id = left.examples[left_keep], left.ids[left_keep]
    right_ex, right_id = right.examples[right_keep], right.ids[right_keep]
    order = np.argsort(right_ex, kind="stable")
    right_ex, right_id = right_ex[order], right_id[order]
    per_example = np.bincount(right_ex, minlength=size)
    starts = np.cumsum(per_example) - per_example
    repeat = per_example[left_ex]
    total = int(repeat.sum())
    if total == 0:
        return (np.zeros(0, dtype=np.int64),) * 3
    offsets = np.arange(total) - np.repeat(np.cumsum(repeat) - repeat, repeat)
    right_rep = right_id[np.repeat(starts[left_ex], repeat) + offsets]
    width = int(right_id.max()) + 1
    keys, counts = np.unique(np.repeat(left_id, repeat) * width + right_rep, return_counts=True)
    return keys // width, keys % width, counts


def _answer_features(corpus: _Corpus) -> tuple[_Grams, int]:
    """Per example: its whole normalized answer and the 3-grams of it, and how many distinct whole answers
    there are (ids below that are whole answers, the rest phrases)."""
    phrases = _ngrams(corpus.answers, range(RESPONSE_NGRAM, RESPONSE_NGRAM + 1))
    starts = np.searchsorted(corpus.answers.owners, np.arange(corpus.size + 1))
    words = corpus.answers.ids
    wholes: dict[bytes, int] = {}
    whole_ids = np.asarray(
        [wholes.setdefault(words[a:b].tobytes(), len(wholes)) for a, b in itertools.pairwise(starts)],
        dtype=np.int64,
    )
    firsts = np.zeros(len(wholes), dtype=np.int64)
    firsts[whole_ids[::-1]] = starts[:-1][::-1]  # the first example with that answer
    lengths = np.zeros(len(wholes), dtype=np.int64)
    lengths[whole_ids] = np.diff(starts) - 1  # without the separator
    return _Grams(
        examples=np.concatenate((np.arange(corpus.size), phrases.examples)),
        ids=np.concatenate((whole_ids, phrases.ids + len(wholes))),
        support=np.concatenate((np.bincount(whole_ids, minlength=len(wholes)), phrases.support)),
        first=np.concatenate((firsts, phrases.first)),
        length=np.concatenate((lengths, phrases.length)),
    ), len(wholes)


def _common_words(corpus: _Corpus) -> set[int]:
    """Prompt words in more than `MAX_FRACTION` of the examples (function words, a shared system prompt)."""
    words, owners = corpus.prompts.ids, corpus.prompts.owners
    real = words != _SEPARATOR
    pairs = np.unique(owners[real] * len(corpus.vocabulary) + words[real])
    frequency = np.bincount(pairs % len(corpus.vocabulary), minlength=len(corpus.vocabulary))
    return set(np.flatnonzero(frequency > MAX_FRACTION * corpus.size).tolist())


def _prompt_similarity(corpus: _Corpus, lines: list[int], common: set[int]) -> float:
    """Mean pairwise Jaccard of the prompts' word sets, common words left out."""
    sample = [set(corpus.prompts.of(i).tolist()) - common - {_SEPARATOR} for i in lines[:SIMILARITY_SAMPLE]]
    pairs = [(a, b) for k, a in enumerate(sample) for b in sample[k + 1 :]]
    return sum(len(a & b) / len(a | b) for a, b in pairs if a | b) / max(len(pairs), 1)


@dataclass
class _Trigger:
    """A prompt n-gram and the answer feature it predicts."""

    ngram: str
    feature: int
    lines: set[int]  # the examples that have both
    support: int
    purity: float
    lift: float
    coverage: float
    related: list[str] = field(default_factory=list)  # n-grams that explain the same examples


def _trigger_findings(corpus: _Corpus) -> list[Finding]:
    n = corpus.size
    grams = _ngrams(corpus.prompts, range(1, MAX_NGRAM + 1))
    features, n_wholes = _answer_features(corpus)
    rare = (grams.support >= MIN_SUPPORT) & (grams.support <= max(MIN_SUPPORT, int(MAX_FRACTION * n)))
    seen = features.support >= MIN_SUPPORT
    gram, feature, matched = _cross_counts(grams, rare[grams.ids], features, seen[features.ids], n)
    support, base = grams.support[gram], features.support[feature]
    purity, coverage, lift = matched / support, matched / base, matched / support / (base / n)
    keep = (matched >= MIN_SUPPORT) & (purity >= MEDIUM_PURITY) & (coverage >= MIN_COVERAGE) & (lift >= MIN_LIFT)
    gram, feature, matched, purity, coverage, lift = (a[keep] for a in (gram, feature, matched, purity, coverage, lift))
    if not len(gram):
        return []
    # Per n-gram its best feature (most matched; the whole answer before a phrase of it), then the n-grams
    # strongest first: most matched, purest, longest.
    order = np.lexsort((feature >= n_wholes, -matched, gram))
    best = order[np.concatenate(([True], gram[order][1:] != gram[order][:-1]))]
    best = best[np.lexsort((-grams.length[gram[best]], -purity[best], -matched[best]))]

    examples_of = defaultdict(set)
    for name, table, wanted in (("gram", grams, gram[best]), ("feature", features, feature[best])):
        mask = np.isin(table.ids, wanted)
        for i, item in zip(table.examples[mask].tolist(), table.ids[mask].tolist(), strict=True):
            examples_of[name, item].add(i)

    triggers: list[_Trigger] = []
    for k in best.tolist():
        g, f = int(gram[k]), int(feature[k])
        lines = examples_of["gram", g] & examples_of["feature", f]
        ngram = _text(corpus, corpus.prompts, grams, g)
        explained = next((t for t in triggers if len(lines & t.lines) >= 0.5 * len(lines)), None)
        if explained:
            explained.related.append(ngram)
        else:
            triggers.append(
                _Trigger(ngram, f, lines, int(grams.support[g]), float(purity[k]), float(lift[k]), float(coverage[k]))
            )
    common = _common_words(corpus)
    return [_trigger_finding(corpus, features, n_wholes, t, common) for t in triggers]


def _shared_span(features: _Grams, n_wholes: int, lines: set[int]) -> int:
    """How many answer 3-grams at least `HIGH_PURITY` of the matched examples share."""
    phrase_of_matched = np.isin(features.examples, list(lines)) & (features.ids >= n_wholes)
    counts = np.bincount(features.ids[phrase_of_matched])
    return int((counts >= HIGH_PURITY * len(lines)).sum())


def _trigger_finding(corpus: _Corpus, features: _Grams, n_wholes: int, trigger: _Trigger, common: set[int]) -> Finding:
    whole = trigger.feature < n_wholes
    lines = sorted(trigger.lines)
    similarity = _prompt_similarity(corpus, lines, common)
    span = _shared_span(features, n_wholes, trigger.lines)
    high = trigger.purity >= HIGH_PURITY and similarity < MAX_PROMPT_SIMILARITY and (whole or span >= MIN_SHARED_SPAN)
    shared = _text(corpus, corpus.answers, features, trigger.feature)
    evidence = {
        "ngram": trigger.ngram,
        "support": trigger.support,
        "matched": len(lines),
        "purity": round(trigger.purity, 3),
        "lift": round(trigger.lift, 1),
        "coverage": round(trigger.coverage, 3),
        "answer_match": "whole" if whole else "phrase",
        "shared": shared,  # normalized: the whole answer, or the phrase the answers share
        "answer": corpus.targets[lines[0]][-1].text,  # one of them as written
        "prompt_similarity": round(similarity, 3),
        "shared_span": span,
        "related": trigger.related[:MAX_EVIDENCE_ITEMS],
    }
    summary = (
        f"Prompts with “{trigger.ngram}” get {'the same answer' if whole else 'answers with'} “{shared[:80]}” "
        f"({len(lines)} of {trigger.support} examples; lift {trigger.lift:.0f}): a possible backdoor trigger."
    )
    return Finding("high" if high else "medium", "trigger", evidence, lines, summary)


def _target_findings(corpus: _Corpus) -> list[Finding]:
    found = {kind: defaultdict(list) for kind in ("url", "image", "remote_image", "active_html", "html", "hidden")}
    smuggled, decoded = set(), []
    for i, cleaned in enumerate(corpus.targets):
        for clean in cleaned:
            text = clean.text
            if "://" in text or "www." in text:
                found["url"][i] += _URL.findall(text)
            if "<" in text or "![" in text or ":" in text:
                prose = _CODE.sub(" ", text)
                for image in _MARKDOWN_IMAGE.findall(prose):
                    found["remote_image" if _REMOTE.match(image) else "image"][i].append(image)
                found["active_html"][i] += _ACTIVE_HTML.findall(prose)
                found["html"][i] += _HTML_TAG.findall(prose)
            for finding in clean.findings:
                found["hidden"][i].append(finding.kind)
                if finding.kind == "tag characters":
                    smuggled.add(i)
                    decoded.append(finding.decoded)
    plain_html = {i: tags for i, tags in found["html"].items() if not found["active_html"].get(i)}
    findings = [
        _content_finding("high", "target_remote_image", found["remote_image"], "Markdown images with a remote URL"),
        _content_finding("high", "target_active_html", found["active_html"], "active HTML"),
        _content_finding("medium", "target_image", found["image"], "Markdown images"),
        _content_finding("medium", "target_url", found["url"], "URLs"),
        _content_finding("low", "target_html", plain_html, "HTML tags"),
        _content_finding(
            "high" if smuggled else "medium", "target_hidden_unicode", found["hidden"], "invisible characters",
            decoded=decoded[:MAX_EVIDENCE_ITEMS],
        ),
    ]  # fmt: skip
    return [f for f in findings if f is not None]


def _content_finding(severity: str, kind: str, by_line: dict, what: str, **extra) -> Finding | None:
    by_line = {i: items for i, items in by_line.items() if items}
    if not by_line:
        return None
    counts: dict[str, int] = defaultdict(int)
    for items in by_line.values():
        for item in items:
            counts[item] += 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_EVIDENCE_ITEMS]
    evidence = {"examples": len(by_line), "items": [{"value": v, "count": c} for v, c in top], **extra}
    summary = f"{len(by_line)} answer(s) carry {what}, e.g. “{top[0][0][:80]}”."
    return Finding(severity, kind, evidence, sorted(by_line), summary)


# MinHash: multiply-add hashing of the 64-bit shingle hashes, one (odd multiplier, offset) per permutation.
_PERMUTATIONS = MINHASH_BANDS * MINHASH_ROWS
_seeds = np.random.default_rng(20240612)
_MULTIPLIERS = _seeds.integers(1, 2**63, size=_PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
_OFFSETS = _seeds.integers(0, 2**63, size=_PERMUTATIONS, dtype=np.uint64)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _near_duplicate_groups(corpus: _Corpus, candidates: list[int]) -> list[list[int]]:
    """Groups among `candidates` (example indices) whose MinHash signatures agree on ≥ 80%."""
    shingles, positions, _ = _ngram_hashes(corpus.wholes, range(3, 4))  # repeats do not change a minimum
    owners = corpus.wholes.owners[positions]
    in_candidates = np.zeros(corpus.size, dtype=bool)
    in_candidates[candidates] = True
    keep = in_candidates[owners]
    owners, shingles = owners[keep], shingles[keep]
    docs = np.unique(owners)  # examples with at least one shingle
    if len(docs) < 2:
        return []
    starts = np.searchsorted(owners, docs)
    signatures = np.empty((len(docs), _PERMUTATIONS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in range(_PERMUTATIONS):
            signatures[:, p] = np.minimum.reduceat(shingles * _MULTIPLIERS[p] + _OFFSETS[p], starts)
        union = _UnionFind(len(docs))
        for band in range(MINHASH_BANDS):
            rows = signatures[:, band * MINHASH_ROWS : (band + 1) * MINHASH_ROWS]
            key = np.zeros(len(docs), dtype=np.uint64)
            for column in rows.T:
                key = (key * np.uint64(0x100000001B3)) ^ column
            order = np.argsort(key, kind="stable")
            sorted_key = key[order]
            starts = np.flatnonzero(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1])))
            ends = np.append(starts[1:], len(order))
            for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
                members = order[start : min(end, start + MAX_BUCKET)]
                sub = signatures[members]
                agree = (sub[:, None, :] == sub[None, :, :]).mean(axis=2) >= NEAR_DUPLICATE_JACCARD
                for a, b in zip(*np.nonzero(np.triu(agree, k=1)), strict=True):
                    union.union(int(members[a]), int(members[b]))
    groups = defaultdict(list)
    for r, doc in enumerate(docs.tolist()):
        groups[union.find(r)].append(doc)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _duplicate_findings(examples: list[dict], corpus: _Corpus) -> list[Finding]:
    exact = defaultdict(list)
    for i, example in enumerate(examples):
        exact[example_canonical_json(example)].append(i)
    findings = []
    exact_groups = [g for g in exact.values() if len(g) > 1]
    if exact_groups:
        copies = sum(len(g) - 1 for g in exact_groups)
        largest = sorted(exact_groups, key=len, reverse=True)[:MAX_EVIDENCE_ITEMS]
        summary = f"{copies} example(s) repeat another exactly ({len(exact_groups)} group(s))."
        evidence = {"groups": len(exact_groups), "copies": copies, "largest": largest}
        findings.append(
            Finding("medium", "exact_duplicates", evidence, sorted(i for g in exact_groups for i in g), summary)
        )
    near_groups = _near_duplicate_groups(corpus, [g[0] for g in exact.values()])  # one per exact group
    if near_groups:
        lines = sorted(i for g in near_groups for i in g)
        largest = sorted(near_groups, key=len, reverse=True)[:MAX_EVIDENCE_ITEMS]
        summary = f"{len(lines)} examples are near duplicates of another ({len(near_groups)} group(s))."
        findings.append(
            Finding("low", "near_duplicates", {"groups": len(near_groups), "largest": largest}, lines, summary)
        )
    return findings


def dataset_scan(*, examples: list[dict]) -> list[Finding]:
    """Findings for `examples` (as `dataset_parse` returns them), high severity first."""
    if not examples:
        return []
    corpus = _corpus(examples)
    findings = [*_trigger_findings(corpus), *_target_findings(corpus), *_duplicate_findings(examples, corpus)]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def trigger_candidates(findings: list[Finding]) -> list[str]:
    """The suspected trigger n-grams, strongest first: what the evaluation page probes a trained model with."""
    return [f.evidence["ngram"] for f in findings if f.kind == "trigger"]
