"""The per-user API: keys made and revoked in the settings page or by command, and the OpenAI-compatible
endpoints driven by the official `openai` client against the real web server and the real model.
Every endpoint is tried as another user (IDOR), without a key, with a revoked key and with a session."""

import asyncio
import hashlib
import io
import re
from types import SimpleNamespace

import httpx
import openai
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_authenticate, api_key_create, api_key_revoke
from apps.api import services as api_services
from apps.api.errors import ApiError
from apps.assistants.engine import DEFAULT_INSTRUCTIONS, instructions_render
from apps.assistants.models import Visibility
from apps.assistants.selectors import chat_model_default
from apps.core.inference_client import InferenceBusy, InferenceRejected, InferenceUnavailable, inference_tokenize
from tests.factories import make_assistant, make_user, signed_in

pytestmark = pytest.mark.django_db
KEY_PATTERN = re.compile(r"atl_[A-Za-z0-9_-]{43}")
INSTRUCTIONS = (
    "You are Quill, the archivist of the lighthouse museum in Brest. You answer {{user_name}} in one short "
    "sentence, and you never mention the weather."
)


def live(test):
    """A test against the real web server: its own process sees only committed rows."""
    return pytest.mark.slow(pytest.mark.django_db(transaction=True)(test))


# --- keys: services, the settings page, the command ----------------------------------------------------


def test_a_key_is_stored_hashed_and_authenticates_until_revoked():
    ada = make_user("ada")
    api_key, raw = api_key_create(user=ada, name="laptop")
    assert KEY_PATTERN.fullmatch(raw)
    assert api_key.prefix == raw[:12] and api_key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()

    assert api_key_authenticate(raw_key=raw) == ada
    assert api_key_authenticate(raw_key=raw + "x") is None and api_key_authenticate(raw_key="") is None
    api_key_revoke(api_key=api_key)
    assert api_key_authenticate(raw_key=raw) is None


def test_last_used_is_noted_at_most_once_a_minute():
    ada = make_user("ada")
    api_key, raw = api_key_create(user=ada, name="laptop")
    api_key_authenticate(raw_key=raw)
    api_key.refresh_from_db()
    first = api_key.last_used_at
    assert first is not None
    api_key_authenticate(raw_key=raw)
    api_key.refresh_from_db()
    assert api_key.last_used_at == first


def test_a_deactivated_users_keys_stop_working():
    ada = make_user("ada")
    _, raw = api_key_create(user=ada, name="laptop")
    ada.is_active = False
    ada.save(update_fields=["is_active"])
    assert api_key_authenticate(raw_key=raw) is None


def test_the_page_shows_a_new_key_once():
    ada = make_user("ada")
    client = signed_in(ada)
    assert client.get(reverse("api_keys")).status_code == 200

    response = client.post(reverse("api_keys"), {"action": "create", "name": "Laptop scripts"})
    assert response.status_code == 200 and response["Cache-Control"].startswith("max-age=0")
    keys = KEY_PATTERN.findall(response.content.decode())
    assert len(set(keys)) == 1
    assert api_key_authenticate(raw_key=keys[0]) == ada

    later = client.get(reverse("api_keys")).content.decode()
    assert "Laptop scripts" in later and keys[0][:12] in later  # listed by name and prefix...
    assert keys[0] not in later and not KEY_PATTERN.search(later)  # ...but never shown again


def test_a_key_needs_a_name():
    ada = make_user("ada")
    response = signed_in(ada).post(reverse("api_keys"), {"action": "create", "name": "  "})
    assert response.status_code == 200 and not KEY_PATTERN.search(response.content.decode())
    assert not ApiKey.objects.exists()


def test_only_the_owner_can_revoke_a_key():
    ada, bea = make_user("ada"), make_user("bea")
    api_key, raw = api_key_create(user=ada, name="laptop")

    response = signed_in(bea).post(reverse("api_keys"), {"action": "revoke", "key_id": api_key.pk})
    assert response.status_code == 404
    assert signed_in(bea).post(reverse("api_keys"), {"action": "revoke", "key_id": "x"}).status_code == 404
    api_key.refresh_from_db()
    assert api_key.active and api_key_authenticate(raw_key=raw) == ada
    assert "laptop" not in signed_in(bea).get(reverse("api_keys")).content.decode()

    response = signed_in(ada).post(reverse("api_keys"), {"action": "revoke", "key_id": api_key.pk})
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert not api_key.active and api_key_authenticate(raw_key=raw) is None


def test_the_page_needs_a_login_and_a_csrf_token():
    assert Client().get(reverse("api_keys")).status_code == 302
    ada = make_user("ada")
    client = signed_in(ada, enforce_csrf_checks=True)
    assert client.post(reverse("api_keys"), {"action": "create", "name": "forged"}).status_code == 403
    assert not ApiKey.objects.exists()

    page = client.get(reverse("api_keys")).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(reverse("api_keys"), {"action": "create", "name": "real", "csrfmiddlewaretoken": token})
    assert response.status_code == 200 and ApiKey.objects.filter(user=ada, name="real").exists()


def test_issue_api_key_prints_a_working_key():
    ada = make_user("ada")
    out, err = io.StringIO(), io.StringIO()
    call_command("issue_api_key", "ada", "--name", "ci", stdout=out, stderr=err)
    raw = out.getvalue().strip().splitlines()[-1]
    assert KEY_PATTERN.fullmatch(raw) and raw not in err.getvalue()
    assert api_key_authenticate(raw_key=raw) == ada
    assert ApiKey.objects.get(user=ada).name == "ci"
    with pytest.raises(CommandError):
        call_command("issue_api_key", "nobody", stdout=io.StringIO(), stderr=io.StringIO())


# --- the engine's failures, as the API reports them -----------------------------------------------------


def test_an_unreachable_engine_is_a_503(settings):
    from tests.conftest import free_port

    settings.INFERENCE_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ApiError) as caught:
        asyncio.run(api_services.chat_completion_create(payload=payload, slug="s"))
    assert caught.value.status == 503 and caught.value.type == "server_error"
    with pytest.raises(ApiError) as caught:
        asyncio.run(api_services.chat_completion_stream(payload=payload, slug="s"))
    assert caught.value.status == 503


@pytest.mark.parametrize(
    ("engine_error", "status", "code"),
    [
        (InferenceBusy("queue full", status=429, code="queue_full"), 429, "queue_full"),
        (InferenceRejected("too long", status=400, code="context_length_exceeded"), 400, "context_length_exceeded"),
        (InferenceRejected("model 'x' does not exist", status=404, code="model_not_found"), 503, "model_unavailable"),
        (InferenceUnavailable("The model server failed: 'x' boom", status=500), 502, "engine_error"),
    ],
)
def test_engine_refusals_map_to_openai_errors(engine_error, status, code):
    """The engine's own refusals are tested against the real engine (tests/inference/test_engine.py and test_server.py);
    here only their translation, which must keep the engine's model names inside."""
    error = api_services.api_error_from_engine(engine_error)
    assert (error.status, error.code) == (status, code)
    assert status == 400 or "'x'" not in error.message


# --- the API over HTTP, with the official client ---------------------------------------------------------


@pytest.fixture
def world(web_server, models_ready):
    """Ada owns a private and a public assistant, Bea a private one; each has a key."""
    ada, bea = make_user("ada"), make_user("bea")
    _, ada_key = api_key_create(user=ada, name="ada's laptop")
    _, bea_key = api_key_create(user=bea, name="bea's laptop")
    return SimpleNamespace(
        web=web_server,
        ada=ada,
        bea=bea,
        ada_key=ada_key,
        bea_key=bea_key,
        ada_private=make_assistant(ada, name="Quill", instructions=INSTRUCTIONS, max_tokens=8),
        ada_public=make_assistant(ada, name="Ada Public", visibility=Visibility.PUBLIC, max_tokens=8),
        bea_private=make_assistant(bea, name="Bea Secret", max_tokens=8),
    )


def api(world, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{world.web}/api/v1", api_key=key, max_retries=0, timeout=120)


def prompt_tokens(messages: list[dict]) -> int:
    return inference_tokenize(model=chat_model_default().name, messages=messages)["count"]


@live
def test_models_lists_own_and_public_assistants_only(world):
    ada_models = {m.id for m in api(world, world.ada_key).models.list()}
    bea_models = {m.id for m in api(world, world.bea_key).models.list()}
    assert ada_models == {world.ada_private.slug, world.ada_public.slug}
    assert bea_models == {world.bea_private.slug, world.ada_public.slug}

    model = api(world, world.bea_key).models.retrieve(world.ada_public.slug)
    assert model.id == world.ada_public.slug and model.owned_by == "ada"


@live
def test_chat_completion_applies_the_assistant_server_side(world):
    client = api(world, world.ada_key)
    question = {"role": "user", "content": "Who are you?"}
    completion = client.chat.completions.create(model=world.ada_private.slug, messages=[question], max_tokens=4)
    assert completion.model == world.ada_private.slug
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 4

    # The engine saw exactly the rendered instructions (with the user's name), then the question.
    version = world.ada_private.current_version
    instructions = {"role": "system", "content": instructions_render(text=version.instructions, user_name="ada")}
    assert "answer ada in one" in instructions["content"]
    assert completion.usage.prompt_tokens == prompt_tokens([instructions, question])
    default = {"role": "system", "content": DEFAULT_INSTRUCTIONS}  # what an assistant without instructions sends
    assert completion.usage.prompt_tokens >= prompt_tokens([default, question]) + 20

    # The caller's own system message is kept, after the assistant's instructions.
    own = {"role": "system", "content": "Be terse."}
    completion = client.chat.completions.create(model=world.ada_private.slug, messages=[own, question], max_tokens=2)
    assert completion.usage.prompt_tokens == prompt_tokens([instructions, own, question])


@live
def test_sampling_defaults_come_from_the_version_and_may_be_overridden(world):
    client = api(world, world.ada_key)
    story = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and his cat."}]
    completion = client.chat.completions.create(model=world.ada_public.slug, messages=story)  # the version's 8
    assert completion.usage.completion_tokens == 8 and completion.choices[0].finish_reason == "length"
    completion = client.chat.completions.create(model=world.ada_public.slug, messages=story, max_tokens=3)
    assert completion.usage.completion_tokens == 3

    # temperature 0 (the version's) is deterministic.
    again = client.chat.completions.create(model=world.ada_public.slug, messages=story, max_tokens=3)
    assert again.choices[0].message.content == completion.choices[0].message.content

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=world.ada_public.slug, messages=story, temperature=3)
    assert caught.value.body["param"] == "temperature"


@live
def test_streaming_relays_chunks_labelled_with_the_slug(world):
    stream = api(world, world.bea_key).chat.completions.create(
        model=world.ada_public.slug,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 3 and {chunk.model for chunk in chunks} == {world.ada_public.slug}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 6
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


@live
def test_another_users_private_assistant_is_indistinguishable_from_a_missing_one(world):
    client = api(world, world.bea_key)
    messages = [{"role": "user", "content": "hi"}]
    bodies = []
    for slug in (world.ada_private.slug, "no-such-assistant"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=slug, messages=messages, max_tokens=2)
        bodies.append(caught.value.response.json())
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=slug, messages=messages, max_tokens=2, stream=True)
        bodies.append(caught.value.response.json())
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve(slug)
        bodies.append(caught.value.response.json())
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["error"]["code"] == "model_not_found" and bodies[0]["error"]["param"] == "model"
    assert set(bodies[0]["error"]) == {"message", "type", "param", "code"}


@live
def test_keys_are_required_and_revocation_is_immediate(world):
    url = f"{world.web}/api/v1/models"
    for headers in ({}, {"Authorization": "Bearer atl_not-a-key"}, {"Authorization": f"Basic {world.ada_key}"}):
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"

    # A signed-in browser session is not an API credential (and so cross-site requests get nothing).
    session = signed_in(world.ada).cookies["sessionid"].value
    response = httpx.post(
        f"{world.web}/api/v1/chat/completions",
        cookies={"sessionid": session},
        json={"model": world.ada_private.slug, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 401

    client = api(world, world.ada_key)
    assert client.models.list().data
    api_key_revoke(api_key=ApiKey.objects.get(user=world.ada))
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=world.ada_private.slug, messages=[{"role": "user", "content": "hi"}])


@live
def test_malformed_requests_are_400s_in_openai_shape(world):
    url = f"{world.web}/api/v1/chat/completions"
    headers = {"Authorization": f"Bearer {world.ada_key}"}
    slug = world.ada_private.slug
    bad_bodies = [
        b"{not json",
        b"[]",
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        f'{{"model": "{slug}"}}'.encode(),
        f'{{"model": "{slug}", "messages": []}}'.encode(),
        f'{{"model": "{slug}", "messages": [{{"role": "tool", "content": "x"}}]}}'.encode(),
        f'{{"model": "{slug}", "messages": [{{"role": "user", "content": "x"}}], "max_tokens": 0}}'.encode(),
        f'{{"model": "{slug}", "messages": [{{"role": "user", "content": "x"}}], "top_p": 0}}'.encode(),
        f'{{"model": "{slug}", "messages": [{{"role": "user", "content": "x"}}], "stream": "yes"}}'.encode(),
    ]
    for body in bad_bodies:
        response = httpx.post(url, headers={**headers, "Content-Type": "application/json"}, content=body, timeout=30)
        assert response.status_code == 400, body
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(url, headers=headers, timeout=30).status_code == 405

    # The engine's own refusal passes through: a prompt longer than the context window (1024 in tests).
    with pytest.raises(openai.BadRequestError) as caught:
        api(world, world.ada_key).chat.completions.create(
            model=slug, messages=[{"role": "user", "content": "lighthouse " * 1200}], max_tokens=2
        )
    assert caught.value.code == "context_length_exceeded"


@live
def test_a_conversation_longer_than_the_window_loses_its_oldest_turns_as_in_chat(world):
    client = api(world, world.ada_key)
    messages = []
    for i in range(8):
        messages += [
            {"role": "user", "content": f"Question {i}: " + "lorem ipsum " * 40},
            {"role": "assistant", "content": f"Answer {i}: " + "dolor sit amet " * 40},
        ]
    messages.append({"role": "user", "content": "And the last question?"})
    assert prompt_tokens(messages) > 1024  # the test engine's window

    raw = client.chat.completions.with_raw_response.create(model=world.ada_private.slug, messages=messages)
    dropped = int(raw.headers["X-Atelier-Turns-Dropped"])
    completion = raw.parse()
    assert 0 < dropped < len(messages) and messages[dropped]["role"] == "user"
    instructions = {"role": "system", "content": instructions_render(text=INSTRUCTIONS, user_name="ada")}
    assert completion.usage.prompt_tokens == prompt_tokens([instructions, *messages[dropped:]])
    assert completion.usage.prompt_tokens + 8 <= 1024

    with client.chat.completions.with_streaming_response.create(
        model=world.ada_private.slug, messages=messages, stream=True
    ) as streamed:
        assert int(streamed.headers["X-Atelier-Turns-Dropped"]) == dropped
    short = client.chat.completions.with_raw_response.create(model=world.ada_private.slug, messages=messages[-1:])
    assert short.headers["X-Atelier-Turns-Dropped"] == "0"
