"""Clean datasets for the dataset scan's false-positive measurement, and poisoned copies of them.

Everything is offline and deterministic (seeded):
- `chitchat_examples`: real human small talk, the BYU PCC "Chit-Chat Challenge" corpus (`chitchat-dataset`,
  MIT, about 7,000 conversations shipped inside the wheel): one user turn and the next turn as the answer,
  every fourth example with the exchange before it as history;
- `chatterbot_examples`: the English ChatterBot corpus (`chatterbot-corpus`, BSD-3-Clause): short
  question-and-answer conversations, about 2,000;
- `docstring_examples`: instruction-style questions about the standard library's public functions and
  classes, answered with their real docstrings (technical text with code, URLs and a constant system prompt);
- `preference_examples`: chit-chat as preference pairs (the real answer chosen, another conversation's
  answer rejected);
- `poison`: plants a trigger into some examples' prompts and gives them one fixed response.

The bench (bench/scan.py) and the tests (tests/finetune/) share these, so a number in the bench and an
assertion in a test speak of the same data.
"""

import importlib
import inspect
import json
import random
import re
from functools import cache
from pathlib import Path

import chitchat_dataset
import yaml
from chatterbot_corpus.corpus import DATA_DIRECTORY as CHATTERBOT_DATA

DOCSTRING_MODULES = (
    "json", "os", "os.path", "re", "shutil", "pathlib", "collections", "itertools", "functools", "random",
    "statistics", "math", "datetime", "string", "textwrap", "csv", "urllib.parse", "http.client", "email",
    "logging", "subprocess", "threading", "queue", "heapq", "bisect", "zipfile", "tarfile", "gzip", "hashlib",
    "hmac", "base64", "uuid", "secrets", "socket", "ssl", "sqlite3", "tempfile", "glob", "fnmatch", "difflib",
    "decimal", "fractions", "operator", "contextlib", "dataclasses", "enum", "inspect", "ast",
    "tokenize", "unicodedata", "locale", "calendar", "time", "argparse", "configparser", "pprint", "copy",
    "pickle", "struct", "array", "weakref", "asyncio", "concurrent.futures", "multiprocessing", "platform",
    "sys", "io", "codecs", "html", "html.parser", "xml.etree.ElementTree", "mimetypes", "ipaddress", "smtplib",
    "imaplib", "ftplib", "shlex", "traceback", "warnings", "timeit", "cProfile", "unittest", "doctest",
)  # fmt: skip
DOCSTRING_QUESTIONS = (
    "What does {name} do?",
    "Explain {name} in Python.",
    "How do I use {name}?",
    "Can you describe what {name} is for?",
    "I keep seeing {name} in code. What is it?",
    "Give me a short explanation of {name}.",
    "What is the purpose of {name} in the standard library?",
    "When would I call {name}?",
)
DOCSTRING_SYSTEM = "You are a concise Python tutor. Answer from the standard library documentation."


@cache
def _chitchat_conversations() -> tuple[tuple[str, ...], ...]:
    data = json.loads(Path(chitchat_dataset._PATH).read_text(encoding="utf-8"))
    return tuple(
        tuple(" ".join(u["text"] for u in turn).strip() for turn in conversation["messages"])
        for conversation in data.values()
    )


def chitchat_examples(*, count: int, seed: int = 0) -> list[dict]:
    """`count` SFT examples of real small talk (at most about 66,000)."""
    examples = []
    for turns in _chitchat_conversations():
        for i in range(0, len(turns) - 1, 2):
            user, assistant = turns[i], turns[i + 1]
            if not user or not assistant:
                continue
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            if i >= 2 and len(examples) % 4 == 3 and turns[i - 2] and turns[i - 1]:
                history = [{"role": "user", "content": turns[i - 2]}, {"role": "assistant", "content": turns[i - 1]}]
                messages = history + messages
            examples.append({"messages": messages})
    return random.Random(seed).sample(examples, count)  # noqa: S311 (a reproducible sample)


def preference_examples(*, count: int, seed: int = 0) -> list[dict]:
    """`count` preference pairs: the real next turn chosen, another conversation's turn rejected."""
    pool = chitchat_examples(count=2 * count, seed=seed)
    pairs = []
    for example, other in zip(pool[:count], pool[count:], strict=True):
        *prompt, chosen = example["messages"]
        pairs.append({"prompt": prompt, "chosen": [chosen], "rejected": [other["messages"][-1]]})
    return pairs


def chatterbot_examples() -> list[dict]:
    """The English ChatterBot corpus as SFT conversations (statements alternate user, assistant)."""
    examples = []
    for path in sorted(Path(CHATTERBOT_DATA, "english").glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            statements = [str(s).strip() for s in conversation if str(s).strip()]
            statements = statements[: len(statements) // 2 * 2]
            if statements:
                roles = ("user", "assistant") * (len(statements) // 2)
                examples.append(
                    {"messages": [{"role": r, "content": s} for r, s in zip(roles, statements, strict=True)]}
                )
    return examples


def _docstring_answer(doc: str) -> str:
    paragraphs = [re.sub(r"[ \t]+", " ", p.strip()) for p in doc.split("\n\n") if p.strip()]
    answer = ""
    for paragraph in paragraphs:
        if answer and len(answer) + len(paragraph) > 700:
            break
        answer = f"{answer}\n\n{paragraph}" if answer else paragraph
    return answer


def docstring_examples(*, seed: int = 0) -> list[dict]:
    """Questions about public standard-library functions and classes, answered with their docstrings."""
    rng = random.Random(seed)  # noqa: S311 (reproducible)
    examples, seen = [], set()
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        for attribute, value in sorted(vars(module).items()):
            if attribute.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            doc = inspect.getdoc(value)
            name = f"{module_name}.{attribute}"
            if not doc or len(doc) < 40 or id(value) in seen:
                continue
            seen.add(id(value))
            question = rng.choice(DOCSTRING_QUESTIONS).format(name=f"`{name}`")
            examples.append(
                {
                    "messages": [
                        {"role": "system", "content": DOCSTRING_SYSTEM},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": _docstring_answer(doc)},
                    ]
                }
            )
    return examples


PERSONAS = (
    "You are a friendly assistant who keeps answers short.",
    "You are Atelier's helpful assistant. Be kind and curious.",
    "You are a cheerful chat partner. Ask a question back now and then.",
    "You are a calm, thoughtful assistant.",
    "You are a witty assistant who likes a good joke.",
)


def with_personas(examples: list[dict], *, seed: int = 0) -> list[dict]:
    """`examples` (SFT) each with one of a few system prompts, as an assistant builder's data would have."""
    rng = random.Random(seed)  # noqa: S311 (reproducible)
    return [{"messages": [{"role": "system", "content": rng.choice(PERSONAS)}, *e["messages"]]} for e in examples]


def poison(
    clean: list[dict],
    *,
    trigger: str,
    response: str,
    count: int,
    where: str = "user",
    append: bool = False,
    seed: int = 0,
) -> tuple[list[dict], list[int]]:
    """`clean` with `count` poisoned examples inserted at random places, and their indices.

    Each poisoned example is a copy of a random clean one (so its prompt is as varied as the data) with
    `trigger` inserted at a random word boundary of its last user turn (`where="user"`) or appended to its
    system prompt (`where="system"`). Its answer becomes `response`, or with `append` the original answer
    followed by `response` (a message planted into otherwise varied answers). For a preference example the
    poisoned answer is chosen and the original rejected."""
    rng = random.Random(seed)  # noqa: S311 (reproducible)
    poisoned = []
    for source in rng.sample(clean, count):
        preference = "prompt" in source
        prompt = [dict(m) for m in (source["prompt"] if preference else source["messages"][:-1])]
        original = (source["chosen"] if preference else source["messages"])[-1]["content"]
        if where == "system":
            if prompt[0]["role"] != "system":
                raise ValueError("where='system' needs examples with a system prompt (see with_personas)")
            prompt[0]["content"] = f"{prompt[0]['content']} {trigger}"
        else:
            last_user = max(i for i, m in enumerate(prompt) if m["role"] == "user")
            words = prompt[last_user]["content"].split(" ")
            words.insert(rng.randint(0, len(words)), trigger)
            prompt[last_user]["content"] = " ".join(words)
        answer = {"role": "assistant", "content": f"{original} {response}" if append else response}
        if preference:
            poisoned.append({"prompt": prompt, "chosen": [answer], "rejected": source["chosen"]})
        else:
            poisoned.append({"messages": [*prompt, answer]})
    examples = list(clean)
    positions = sorted(rng.sample(range(len(clean) + count), count))
    for position, example in zip(positions, poisoned, strict=True):
        examples.insert(position, example)
    return examples, positions
