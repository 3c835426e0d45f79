"""The one engine-request builder (apps/assistants/engine.py) against the real tokenizer: chat, the API
and the builder's preview ask the engine the same thing for the same version, the budget drops the
oldest turns, and a usual answer costs one /tokenize call."""

import json
import uuid

import pytest

from apps.api.services import completion_payload_build
from apps.assistants import engine
from apps.assistants.engine import DEFAULT_INSTRUCTIONS, instructions_render, preview_request_build
from apps.assistants.forms import AssistantForm
from apps.chat import services
from apps.chat.generation import reply_engine_request
from apps.chat.selectors import message_ancestors
from apps.core import inference_client
from tests.factories import make_assistant, make_user

pytestmark = pytest.mark.django_db
INSTRUCTIONS = "You are Quill, archivist of the lighthouse museum. Greet {{user_name}}. Today is {{date}}."
SETTINGS = ("model", "temperature", "top_p", "repetition_penalty", "max_tokens")


def _finish(reply, content: str) -> None:
    type(reply).objects.filter(pk=reply.pk).update(status="done", content=content)


def _form_data(assistant) -> dict:
    """The builder's form as the edit page posts it, unchanged."""
    initial = AssistantForm.initial_for(assistant)
    return {**initial, "base_model": initial["base_model"], "knowledge_collections": []}


def test_instructions_render_fills_placeholders_and_never_sends_nothing():
    from django.utils import timezone

    text = instructions_render(text="Hi {{user_name}}, it is {{date}}.", user_name="ada")
    assert text == f"Hi ada, it is {timezone.localdate().isoformat()}."
    assert instructions_render(text="  ", user_name="ada") == DEFAULT_INSTRUCTIONS


def test_chat_the_api_and_the_preview_send_the_same_request_for_one_version(models_ready, inference_server):
    owner = make_user("ada")
    assistant = make_assistant(
        owner, instructions=INSTRUCTIONS, temperature=0.3, top_p=0.8, repetition_penalty=1.2, max_tokens=50
    )
    conversation = services.conversation_start(assistant=assistant, owner=owner)
    _, first = services.message_send(conversation=conversation, content="Where is the museum?")
    _finish(first, "In Brest, by the harbour.")
    first.refresh_from_db()
    _, reply = services.message_send(conversation=conversation, content="When does it open?")
    turns = [
        {"role": "user", "content": "Where is the museum?"},
        {"role": "assistant", "content": "In Brest, by the harbour."},
        {"role": "user", "content": "When does it open?"},
    ]

    chat = reply_engine_request(reply=reply, history=message_ancestors(message=reply)[:-1]).body
    api = completion_payload_build(
        assistant=assistant, body={"model": assistant.slug, "messages": turns}, user=owner
    ).body
    form = AssistantForm(_form_data(assistant), owner=owner, assistant=assistant)
    assert form.is_valid(), form.errors
    preview = preview_request_build(config=form.config(), conversation=json.dumps(turns), user_name="ada").body

    system = {"role": "system", "content": instructions_render(text=INSTRUCTIONS, user_name="ada")}
    assert chat["messages"] == api["messages"] == preview["messages"] == [system, *turns]
    assert [chat[k] for k in SETTINGS] == [api[k] for k in SETTINGS] == [preview[k] for k in SETTINGS]
    assert (chat["temperature"], chat["top_p"], chat["repetition_penalty"]) == (0.3, 0.8, 1.2)


def test_a_long_conversation_loses_its_oldest_turns_and_never_opens_on_an_answer(models_ready, inference_server):
    assistant = make_assistant(make_user("ada"), max_tokens=200)
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"Question {i}: " + "lorem ipsum " * 40},
            {"role": "assistant", "content": f"Answer {i}: " + "dolor sit amet " * 40},
        ]
    turns.append({"role": "user", "content": "And the last question?"})
    request = engine.engine_request_build(version=assistant.current_version, messages=turns, user_name="ada")
    report = request.report
    assert report["window"] == 1024 and report["reserved"] == 200
    assert 0 < request.turns_dropped < len(turns)
    assert report["turns_included"] + report["turns_dropped"] == len(turns)
    assert report["prompt"] + report["reserved"] <= report["window"]
    sent = request.body["messages"]
    assert sent[1]["role"] == "user" and sent[1:] == turns[-(len(sent) - 1) :]
    assert request.body["max_tokens"] == 200
    assert len(request.token_counts) == len(turns) and all(c > 0 for c in request.token_counts)
    # The exact count of what is sent is the engine's own.
    counted = inference_client.inference_token_counts(
        model=assistant.current_version.base_model.name, conversations=[sent]
    )
    assert counted["counts"] == [report["prompt"]]

    with pytest.raises(engine.ContextTooSmall, match="context window"):
        engine.engine_request_build(
            version=assistant.current_version, messages=[{"role": "user", "content": "word " * 3000}], user_name="ada"
        )


def test_a_usual_answer_costs_one_tokenize_call(models_ready, inference_server, monkeypatch):
    """Instruction counts are cached per rendered text and turn counts are passed back in, so the next
    answer counts only the new question and the prompt, in one batch."""
    calls = []
    real = engine.inference_token_counts

    def counting(**kwargs):
        calls.append(len(kwargs["conversations"]))
        return real(**kwargs)

    monkeypatch.setattr(engine, "inference_token_counts", counting)
    fresh = f"Answer in French. ({uuid.uuid4()})"  # instructions never counted before, by any run
    version = make_assistant(make_user("ada"), instructions=fresh).current_version
    turns = [{"role": "user", "content": "Hello"}]
    first = engine.engine_request_build(version=version, messages=turns, user_name="ada")
    turns += [{"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "How are you?"}]
    second = engine.engine_request_build(
        version=version, messages=turns, user_name="ada", token_counts=[*first.token_counts, None, None]
    )
    assert calls == [3, 3]  # [prompt, instructions, turn], then [prompt, two new turns]: one call each
    assert second.token_counts[0] == first.token_counts[0]
