"""What an assistant asks of the engine: the one builder of engine requests.

Chat, the per-user API and the builder's live preview (and, later, the arena and the labeling panel)
all call `engine_request_build`, so the same version always sends the same instructions, sampling
settings and model (its adapter, else its base model), within the same context budget.

The context window is the model's RAM. It holds, in order: the rendered instructions, retrieved
knowledge, as much recent history as fits, and room for the answer. The oldest turns are dropped first
and the request reports how many, so chat can show it and the API can send it in a header.

Knowledge: a version with collections retrieves passages for the conversation (apps/knowledge/retrieval.py)
and sends them as a delimited, datamarked data block after the instructions (apps/knowledge/prompting.py),
in at most KNOWLEDGE_SHARE of what the instructions and the answer leave. The passages are chosen before
the count, by estimate, against the model's window and the instructions' cost (both cached; a cold cache
costs one small /tokenize call first), then counted exactly in the same batched call. The report says
their tokens (`knowledge`) and how many were sent (`chunks_included`); the request carries them as
`sources` for the answer's citations.

Counts come from the model's own tokenizer and chat template (the engine's /tokenize). For a ChatML
template every turn is formatted on its own, so a turn's cost is the difference it makes to the
instructions alone. One batched /tokenize call counts whatever is not known yet: the instructions
(cached per rendered text, so once per version and day), each turn not counted before, and the whole
prompt as it would be sent. When everything fits (the usual case) that last count is exact and no
second call is needed; when turns are dropped the kept prompt is counted once more, exactly.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.core.cache import cache
from django.utils import timezone

from apps.core.inference_client import adapter_fields, inference_token_counts
from apps.knowledge.prompting import KnowledgeBlock, knowledge_block_build
from apps.knowledge.retrieval import knowledge_retrieve

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
INSTRUCTIONS_COUNT_TTL = 24 * 3600
KNOWLEDGE_SHARE = 0.5  # of the window left after the instructions and the answer's room


class ContextTooSmall(Exception):
    """Even the newest message alone does not fit; the message says by how much."""


@dataclass(frozen=True)
class EngineRequest:
    body: dict  # the engine's /v1/chat/completions body (the client adds `stream`)
    report: dict  # the context budget: window, system, knowledge, history, reserved, prompt, turns_*
    token_counts: list[int]  # each given message's own cost in tokens, in order, for the caller to keep
    sources: list[dict] = field(default_factory=list)  # the knowledge passages sent, numbered as cited

    @property
    def turns_dropped(self) -> int:
        return self.report["turns_dropped"]


def instructions_render(*, text: str, user_name: str) -> str:
    """Instructions as the model reads them: {{date}} and {{user_name}} filled in, never empty."""
    text = text.strip() or DEFAULT_INSTRUCTIONS
    return text.replace("{{date}}", timezone.localdate().isoformat()).replace("{{user_name}}", user_name or "there")


def engine_settings(*, version) -> dict:
    """What a version (or an unsaved AssistantConfig, which has the same fields) asks of the engine: its
    model (the fine-tune's adapter, else the base model) and its sampling settings.

    The adapter's engine id is the model, and the body carries its folder (`adapter_fields`), so the inference
    client loads it again when the engine lost it (a restart, an eviction) and answers all the same."""
    adapter = version.adapter if version.adapter_id else None
    model = (
        adapter_fields(engine_id=adapter.engine_id, path=adapter.path)
        if adapter is not None
        else {"model": version.base_model.name}
    )
    return {
        **model,
        "temperature": version.temperature,
        "top_p": version.top_p,
        "repetition_penalty": version.repetition_penalty,
        "max_tokens": version.max_tokens,
    }


def engine_request_build(
    *,
    version,
    messages: list[dict],
    user_name: str,
    token_counts: Sequence[int | None] = (),
    max_tokens: int | None = None,
    sampling: dict | None = None,
) -> EngineRequest:
    """The engine request for `messages` (the conversation so far, oldest first) sent to `version`.

    `token_counts` are the messages' costs known from earlier answers (None where unknown); the result
    carries every message's cost so the caller can keep them. `max_tokens` and `sampling` (temperature,
    top_p, repetition_penalty) override the version's own for one request (the API's parameters).
    Raises ContextTooSmall when the newest message cannot fit, and InferenceError when the engine
    cannot count.
    """
    if not messages:
        raise ValueError("An engine request needs at least one message.")
    settings = {**engine_settings(version=version), **(sampling or {})}
    if max_tokens is not None:
        settings["max_tokens"] = max_tokens
    tokenizer_model = version.base_model.name  # adapters share their base model's tokenizer
    system = {"role": "system", "content": instructions_render(text=version.instructions, user_name=user_name)}
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    counts = list(token_counts) + [None] * (len(turns) - len(token_counts))
    cache_key = _instructions_cache_key(tokenizer_model, system["content"])
    system_tokens = cache.get(cache_key)
    knowledge, system_tokens = _knowledge_block(
        version=version,
        turns=turns,
        tokenizer_model=tokenizer_model,
        system=system,
        system_tokens=system_tokens,
        max_tokens=settings["max_tokens"],
    )
    prefix = [system, knowledge.message] if knowledge else [system]

    # One call for everything unknown: the instructions (unless cached), the knowledge block, the uncounted
    # turns, the whole prompt.
    batch = [[*prefix, *turns]]
    if system_tokens is None:
        batch.append([system])
    if knowledge:
        batch.append(prefix)
    unknown = [i for i, count in enumerate(counts) if count is None]
    batch += [[system, turns[i]] for i in unknown]
    answer = inference_token_counts(model=tokenizer_model, conversations=batch)
    window, results = answer["max_model_len"], answer["counts"]
    full_prompt = results[0]
    if system_tokens is None:
        system_tokens = results[1]
        cache.set(cache_key, system_tokens, INSTRUCTIONS_COUNT_TTL)
    knowledge_tokens = results[len(batch) - len(unknown) - 1] - system_tokens if knowledge else 0
    for i, count in zip(unknown, results[-len(unknown) :] if unknown else [], strict=True):
        counts[i] = count - system_tokens

    reserved = min(settings["max_tokens"], window // 2)
    budget = window - reserved - system_tokens - knowledge_tokens
    if counts[-1] > budget:
        raise ContextTooSmall(
            f"Your message is {counts[-1]} tokens, but only {max(budget, 0)} fit in this model's {window}-token "
            f"context window after the instructions ({system_tokens}), retrieved knowledge ({knowledge_tokens}) "
            f"and room for the answer ({reserved}). "
            "Shorten it or split it up."
        )
    first = _first_kept(counts, budget)
    if turns[first]["role"] == "assistant" and first < len(turns) - 1:  # never open the history mid-exchange
        first += 1
    kept = [*prefix, *turns[first:]]
    prompt_tokens = full_prompt
    if first > 0:  # dropped turns: count what is really sent
        prompt_tokens = inference_token_counts(model=tokenizer_model, conversations=[kept])["counts"][0]
        while prompt_tokens + reserved > window and len(kept) > len(prefix) + 1:  # a template that is not additive
            kept.pop(len(prefix))
            prompt_tokens = inference_token_counts(model=tokenizer_model, conversations=[kept])["counts"][0]
    included = len(kept) - len(prefix)
    report = {
        "window": window,
        "system": system_tokens,
        "knowledge": knowledge_tokens,
        "history": prompt_tokens - system_tokens - knowledge_tokens,
        "reserved": reserved,
        "prompt": prompt_tokens,
        "turns_included": included,
        "turns_dropped": len(turns) - included,
        "chunks_included": len(knowledge.sources) if knowledge else 0,
    }
    body = {**settings, "messages": kept, "max_tokens": min(reserved, window - prompt_tokens)}
    return EngineRequest(body=body, report=report, token_counts=counts, sources=knowledge.sources if knowledge else [])


def _knowledge_block(
    *, version, turns: list[dict], tokenizer_model: str, system: dict, system_tokens: int | None, max_tokens: int
) -> tuple[KnowledgeBlock | None, int | None]:
    """The passages `version` retrieves for `turns`, as the data block sent after the instructions (None
    when it retrieves nothing), in KNOWLEDGE_SHARE of the window the instructions and the answer leave.
    Sizing it needs the window and the instructions' cost (`system_tokens`, None when not cached): when
    either is unknown both are counted now and cached, so the instructions' cost is returned too."""
    chunks = knowledge_retrieve(version=version, messages=turns)
    if not chunks:
        return None, system_tokens
    window = cache.get(_window_cache_key(tokenizer_model))
    if window is None or system_tokens is None:  # once per model and day: the share needs both
        answer = inference_token_counts(model=tokenizer_model, conversations=[[system]])
        window, system_tokens = answer["max_model_len"], answer["counts"][0]
        cache.set(_window_cache_key(tokenizer_model), window, INSTRUCTIONS_COUNT_TTL)
        cache.set(_instructions_cache_key(tokenizer_model, system["content"]), system_tokens, INSTRUCTIONS_COUNT_TTL)
    room = window - min(max_tokens, window // 2) - system_tokens
    return knowledge_block_build(chunks=chunks, token_budget=int(max(room, 0) * KNOWLEDGE_SHARE)), system_tokens


def _first_kept(counts: list[int], budget: int) -> int:
    """The index of the oldest turn that still fits, keeping every turn after it."""
    used = 0
    for i in range(len(counts) - 1, -1, -1):
        if used + counts[i] > budget:
            return i + 1
        used += counts[i]
    return 0


def _window_cache_key(model: str) -> str:
    return f"atelier:context-window:{model}"


def _instructions_cache_key(model: str, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"atelier:instructions-tokens:{model}:{digest}"


# --- the builder's live preview ------------------------------------------------------------------------

PREVIEW_MAX_TURNS = 40
PREVIEW_MAX_CHARS = 8000


class PreviewError(Exception):
    """The preview cannot run; the message says why, for the person editing the assistant."""


def preview_request_build(*, config, conversation: str, user_name: str) -> EngineRequest:
    """The engine request for the builder's preview: the unsaved `config` (an AssistantConfig) and the
    preview conversation as the page posts it (JSON: [{"role", "content"}, ...], ending with the user)."""
    try:
        turns = json.loads(conversation or "[]")
    except json.JSONDecodeError as error:
        raise PreviewError("The preview conversation is not valid JSON.") from error
    if not isinstance(turns, list) or not turns:
        raise PreviewError("Write a message to preview the assistant.")
    messages = []
    for turn in turns[-PREVIEW_MAX_TURNS:]:
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise PreviewError("Each preview message needs a role (user or assistant) and content.")
        content = turn.get("content")
        if not isinstance(content, str) or len(content) > PREVIEW_MAX_CHARS:
            raise PreviewError(f"Each preview message must be text of at most {PREVIEW_MAX_CHARS} characters.")
        messages.append({"role": turn["role"], "content": content})
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise PreviewError("The preview conversation must end with your message.")
    try:
        return engine_request_build(version=config, messages=messages, user_name=user_name)
    except ContextTooSmall as error:
        raise PreviewError(str(error)) from error
