"""Context-window budgeting: what goes into the prompt for one answer.

The context window is the model's RAM. It holds, in order: the system instructions, retrieved knowledge
(the knowledge issue fills that slot), as much recent history as fits, and room for the answer. The
oldest turns are dropped first, and the answer records how many, so the UI can say so.

Counts come from the model's own tokenizer and chat template (the inference server's /tokenize). For a
ChatML-style template every turn is formatted on its own, so a turn's cost is the difference it makes
to a conversation of just the system message; the assembled prompt is then counted once more exactly.
"""

from dataclasses import dataclass, field

from django.utils import timezone

from apps.assistants.models import AssistantVersion
from apps.chat.models import Message
from apps.core.inference_client import inference_tokenize

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."


class ContextTooSmall(Exception):
    """Even the newest message alone does not fit; the message says by how much."""


@dataclass
class PromptPlan:
    messages: list[dict]
    max_tokens: int
    report: dict = field(default_factory=dict)


def instructions_text_render(*, text: str, user_name: str) -> str:
    """Fill {{date}} and {{user_name}} into instructions that need not be saved yet (the builder's preview)."""
    text = text.strip() or DEFAULT_INSTRUCTIONS
    return text.replace("{{date}}", timezone.localdate().isoformat()).replace("{{user_name}}", user_name or "there")


def instructions_render(*, version: AssistantVersion, user_name: str) -> str:
    return instructions_text_render(text=version.instructions, user_name=user_name)


def _turn(message: Message) -> dict:
    return {"role": message.role, "content": message.content}


def prompt_build(*, version: AssistantVersion, history: list[Message], user_name: str) -> PromptPlan:
    """`history` runs from the conversation's first message to the newest user message."""
    if not history or history[-1].role != Message.Role.USER:
        raise ValueError("A prompt is built for a question: the history must end with the user's message.")
    model = version.base_model.name
    system = {"role": "system", "content": instructions_render(version=version, user_name=user_name)}
    base = inference_tokenize(model=model, messages=[system], add_generation_prompt=False)
    window, system_tokens = base["max_model_len"], base["count"]
    reserved = min(version.max_tokens, window // 2)
    header = inference_tokenize(model=model, messages=[system])["count"] - system_tokens  # "assistant:" header

    for message in history:
        if message.token_count is None:
            counted = inference_tokenize(model=model, messages=[system, _turn(message)], add_generation_prompt=False)
            message.token_count = counted["count"] - system_tokens
            Message.objects.filter(pk=message.pk).update(token_count=message.token_count)

    budget = window - reserved - system_tokens - header
    newest = history[-1].token_count
    if newest > budget:
        raise ContextTooSmall(
            f"Your message is {newest} tokens, but only {max(budget, 0)} fit in this model's {window}-token "
            f"context window after the instructions ({system_tokens}) and room for the answer ({reserved}). "
            "Shorten it or split it up."
        )
    kept: list[Message] = []
    used = 0
    for message in reversed(history):
        if used + message.token_count > budget:
            break
        kept.append(message)
        used += message.token_count
    kept.reverse()
    if kept and kept[0].role == "assistant" and len(kept) > 1:  # never open the history mid-exchange
        used -= kept.pop(0).token_count

    messages = [system, *(_turn(m) for m in kept)]
    prompt_tokens = inference_tokenize(model=model, messages=messages)["count"]
    while prompt_tokens + reserved > window and len(messages) > 2:  # a template that is not additive
        messages.pop(1)
        kept.pop(0)
        prompt_tokens = inference_tokenize(model=model, messages=messages)["count"]
    report = {
        "window": window,
        "system": system_tokens,
        "knowledge": 0,
        "history": prompt_tokens - system_tokens,
        "reserved": reserved,
        "prompt": prompt_tokens,
        "turns_included": len(kept),
        "turns_dropped": len(history) - len(kept),
    }
    return PromptPlan(messages=messages, max_tokens=min(reserved, window - prompt_tokens), report=report)
