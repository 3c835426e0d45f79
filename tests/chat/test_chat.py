"""Chat: message trees and branches, permissions (IDOR) on every view, share links, and answers generated
by the real worker with the real model, followed live over server-sent events."""

import json
import os
import signal
import time
import uuid
from datetime import timedelta

import httpx
import psutil
import pytest
from django.test import Client
from django.urls import reverse

from apps.assistants.engine import ContextTooSmall
from apps.assistants.models import Visibility
from apps.assistants.services import share_link_issue, share_link_revoke
from apps.chat import services
from apps.chat.generation import replies_fail_abandoned, reply_engine_request, reply_generate
from apps.chat.models import Conversation, Message
from apps.chat.selectors import conversation_thread, message_ancestors
from tests.factories import make_assistant, make_user, signed_in

pytestmark = pytest.mark.django_db


def finish(reply: Message, content: str = "An answer.") -> Message:
    """Stand in for the worker where a test is about the tree, not about generation."""
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE, content=content)
    reply.refresh_from_db()
    return reply


def wait_until_finished(reply: Message, timeout: float = 120) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply.refresh_from_db()
        if reply.finished:
            return reply
        time.sleep(0.2)
    raise AssertionError(f"the answer is still {reply.status} after {timeout} s")


# --- the message tree --------------------------------------------------------------------------------


def test_edits_and_regenerations_become_branches_and_the_old_ones_stay(models_ready):
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    question, reply = services.message_send(conversation=conversation, content="  What is a tensor?  ")
    assert question.content == "What is a tensor?" and reply.status == Message.Status.PENDING
    with pytest.raises(services.ChatError, match="Wait for the answer"):
        services.message_send(conversation=conversation, content="And a matrix?")
    finish(reply)

    edited, edited_reply = services.message_edit(message=question, content="What is a vector?")
    second_reply = services.reply_regenerate(message=finish(edited_reply))
    conversation.refresh_from_db()
    thread = conversation_thread(conversation=conversation)
    assert [e.message for e in thread] == [edited, second_reply]
    assert (thread[0].position, len(thread[0].siblings)) == (2, 2)  # the original question is version 1
    assert (thread[1].position, len(thread[1].siblings)) == (2, 2)

    services.conversation_switch_branch(conversation=conversation, message=question)
    conversation.refresh_from_db()
    assert [e.message.pk for e in conversation_thread(conversation=conversation)] == [question.pk, reply.pk]
    assert conversation.title == "What is a tensor?"


def test_an_empty_or_huge_message_is_refused_and_stopping_a_queued_answer_keeps_the_question(models_ready):
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    with pytest.raises(services.ChatError, match="empty"):
        services.message_send(conversation=conversation, content="   ")
    with pytest.raises(services.ChatError, match="limit"):
        services.message_send(conversation=conversation, content="x" * 40_000)
    question, reply = services.message_send(conversation=conversation, content="Hello")
    services.reply_stop(message=reply)
    reply.refresh_from_db()
    assert reply.status == Message.Status.STOPPED
    assert reply_generate(message_id=str(reply.pk)).status == "skipped"  # the worker finds it already ended
    assert Message.objects.get(pk=question.pk).content == "Hello"


def test_the_json_export_holds_every_branch_and_markdown_the_one_on_screen(models_ready):
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    question, reply = services.message_send(conversation=conversation, content="First question")
    finish(reply, "First answer")
    services.message_edit(message=question, content="Second question")
    client = signed_in(owner)
    exported = json.loads(client.get(reverse("chat:export", args=[conversation.pk, "json"])).content)
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == ["First question", "Second question"]
    assert exported["messages"][1]["parent"] == exported["messages"][0]["id"]
    markdown = client.get(reverse("chat:export", args=[conversation.pk, "md"])).content.decode()
    assert "### You\n\nSecond question" in markdown
    assert markdown.count("First question") == 1  # only as the title: the first branch is not on screen


def test_search_finds_conversations_by_title_and_by_message_text(models_ready):
    owner = make_user("ada")
    assistant = make_assistant(owner)
    for text in ("Tell me about otters", "Photosynthesis, briefly"):
        conversation = services.conversation_start(assistant=assistant, owner=owner)
        _, reply = services.message_send(conversation=conversation, content=text)
        finish(reply, "They hold hands while sleeping." if "otters" in text else "Light to sugar.")
    client = signed_in(owner)
    page = client.get(reverse("chat:list"), {"q": "otters"}).content.decode()  # the box echoes "otters"
    assert "Tell me about otters" in page and "Photosynthesis" not in page
    page = client.get(reverse("chat:list"), {"q": "sugar"}).content.decode()
    assert "Photosynthesis" in page and "otters" not in page


# --- permissions -------------------------------------------------------------------------------------


def test_another_user_cannot_touch_a_conversation_by_id(models_ready):
    owner, intruder = make_user("ada"), make_user("mallory")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    question, reply = services.message_send(conversation=conversation, content="My secret plans")
    finish(reply, "Secret answer")
    client = signed_in(intruder)
    c, q, r = conversation.pk, question.pk, reply.pk
    reads = [
        reverse("chat:conversation", args=[c]),
        reverse("chat:export", args=[c, "md"]),
        reverse("chat:export", args=[c, "json"]),
        reverse("chat:tokens", args=[r]),
        reverse("chat:start", args=[conversation.assistant.slug]),
    ]
    writes = [
        (reverse("chat:send", args=[c]), {"content": "hijack"}),
        (reverse("chat:rename", args=[c]), {"title": "pwned"}),
        (reverse("chat:snapshot_manage", args=[c]), {}),
        (reverse("chat:edit", args=[q]), {"content": "hijack"}),
        (reverse("chat:regenerate", args=[r]), {}),
        (reverse("chat:stop", args=[r]), {}),
        (reverse("chat:branch", args=[q]), {}),
        (reverse("chat:delete", args=[c]), {}),
    ]
    for url in reads:
        assert client.get(url).status_code == 404, url
    for url, data in writes:
        assert client.post(url, data).status_code == 404, url
    assert Client().get(reverse("chat:conversation", args=[c])).status_code == 404  # nor an anonymous visitor
    assert client.get(reverse("chat:conversation", args=[uuid.uuid4()])).status_code == 404
    conversation.refresh_from_db()
    assert conversation.title == "My secret plans" and conversation.snapshot_token is None
    assert conversation.messages.count() == 2


def test_forms_need_the_csrf_token(models_ready):
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    _, reply = services.message_send(conversation=conversation, content="Hi")
    finish(reply)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    c = conversation.pk
    for url in (
        reverse("chat:send", args=[c]),
        reverse("chat:rename", args=[c]),
        reverse("chat:delete", args=[c]),
        reverse("chat:snapshot_manage", args=[c]),
        reverse("chat:regenerate", args=[reply.pk]),
        reverse("chat:stop", args=[reply.pk]),
        reverse("chat:start", args=[conversation.assistant.slug]),
    ):
        assert client.post(url, {"content": "x", "title": "x"}).status_code == 403, url
    assert Conversation.objects.filter(pk=c).exists()


def test_a_share_link_lets_a_visitor_chat_until_it_is_revoked_or_expires(models_ready, settings):
    owner = make_user("ada")
    assistant = make_assistant(owner, visibility=Visibility.LINK, instructions="SECRET-INSTRUCTIONS")
    token = assistant.share_token
    visitor = Client()
    page = visitor.get(reverse("chat:share", args=[token]))
    assert page.status_code == 200 and "SECRET-INSTRUCTIONS" not in page.content.decode()
    response = visitor.post(reverse("chat:share", args=[token]), {"content": "Hello there"})
    conversation = Conversation.objects.get(share_token=token)
    assert response.url == reverse("chat:conversation", args=[conversation.pk])
    assert conversation.owner is None and conversation.session_key
    assert visitor.get(response.url).status_code == 200
    assert Client().get(response.url).status_code == 404  # another browser, no session: nothing
    assert signed_in(owner).get(response.url).status_code == 404  # the owner doesn't read visitors' chats

    new_token = share_link_issue(assistant=assistant)
    assert visitor.get(response.url).status_code == 404  # the old link, and its conversations, are gone
    assert visitor.get(reverse("chat:share", args=[token])).status_code == 404
    assert visitor.get(reverse("chat:share", args=[new_token])).status_code == 200
    share_link_revoke(assistant=assistant)
    assert visitor.get(reverse("chat:share", args=[new_token])).status_code == 404

    from datetime import timedelta

    from django.utils import timezone

    expiring = share_link_issue(assistant=assistant, expires_at=timezone.now() + timedelta(seconds=1))
    assert visitor.get(reverse("chat:share", args=[expiring])).status_code == 200
    time.sleep(1.1)
    assert visitor.get(reverse("chat:share", args=[expiring])).status_code == 404

    settings.ATELIER_ANONYMOUS_SHARING = False
    fresh = share_link_issue(assistant=assistant)
    assert Client().get(reverse("chat:share", args=[fresh])).status_code == 302  # to the login page
    assert signed_in(make_user("bob")).get(reverse("chat:share", args=[fresh])).status_code == 200


def test_anonymous_visitors_are_rate_limited_per_address(models_ready, settings):
    settings.ATELIER_ANONYMOUS_MESSAGES_PER_HOUR = 2
    owner = make_user("ada")
    assistant = make_assistant(owner, visibility=Visibility.LINK)
    visitor = Client(REMOTE_ADDR=f"10.0.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}")
    url = reverse("chat:share", args=[assistant.share_token])
    assert visitor.post(url, {"content": "one"}).status_code == 302
    assert visitor.post(url, {"content": "two"}).status_code == 302
    refused = visitor.post(url, {"content": "three"})
    assert refused.status_code == 200 and "messages an hour" in refused.content.decode()
    assert "three" in refused.content.decode()  # the words stay in the box
    assert Message.objects.filter(role="user").count() == 2


def test_a_snapshot_shows_the_branch_as_it_was_read_only(models_ready):
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    _, reply = services.message_send(conversation=conversation, content="Before sharing")
    finish(reply, "**bold** <script>alert(1)</script>")
    token = services.conversation_snapshot_share(conversation=conversation)
    services.message_send(conversation=conversation, content="After sharing")
    page = Client().get(reverse("chat:snapshot", args=[token])).content.decode()
    assert "Before sharing" in page and "After sharing" not in page
    assert "<strong>bold</strong>" in page and "<script>alert(1)" not in page
    assert "csrfmiddlewaretoken" not in page  # no forms: read-only
    services.conversation_snapshot_revoke(conversation=conversation)
    assert Client().get(reverse("chat:snapshot", args=[token])).status_code == 404


# --- generation with the real model ------------------------------------------------------------------


def test_context_budget_drops_the_oldest_turns_saves_counts_and_refuses_what_cannot_fit(models_ready, inference_server):
    owner = make_user("ada")
    assistant = make_assistant(owner, max_tokens=200)
    conversation = services.conversation_start(assistant=assistant, owner=owner)
    for i in range(6):
        _, reply = services.message_send(conversation=conversation, content=f"Question {i}: " + "lorem ipsum " * 40)
        finish(reply, f"Answer {i}: " + "dolor sit amet " * 40)
    _, reply = services.message_send(conversation=conversation, content="And the last question?")
    history = message_ancestors(message=reply)[:-1]
    request = reply_engine_request(reply=reply, history=history)
    assert request.turns_dropped > 0 and request.report["prompt"] + 200 <= request.report["window"]
    assert request.body["messages"][-1]["content"] == "And the last question?"
    saved = dict(Message.objects.filter(pk__in=[m.pk for m in history]).values_list("pk", "token_count"))
    assert [saved[m.pk] for m in history] == request.token_counts  # counted once, kept for the next answer

    huge = services.conversation_start(assistant=assistant, owner=owner)
    _, reply = services.message_send(conversation=huge, content="word " * 3000)
    with pytest.raises(ContextTooSmall, match="context window"):
        reply_engine_request(reply=reply, history=[reply.parent])
    assert reply_generate(message_id=str(reply.pk)).status == Message.Status.ERROR
    reply.refresh_from_db()
    assert "context window" in reply.error and Message.objects.get(pk=reply.parent_id).content.startswith("word")


def test_an_answer_when_the_engine_is_down_fails_clearly_and_keeps_the_question(models_ready, settings):
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # nothing listens there
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    _, reply = services.message_send(conversation=conversation, content="Anyone there?")
    assert reply_generate(message_id=str(reply.pk)).status == Message.Status.ERROR
    reply.refresh_from_db()
    assert "not reachable" in reply.error
    page = signed_in(owner).get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert "not reachable" in page and "Anyone there?" in page and "Retry" in page


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_answers_with_the_real_model_and_viewers_follow_it_live(models_ready, web_server):
    owner = make_user("ada")
    assistant = make_assistant(owner, instructions="You are a geography teacher. Today is {{date}}.", max_tokens=40)
    conversation = services.conversation_start(assistant=assistant, owner=owner)
    _, reply = services.message_send(conversation=conversation, content="What is the capital of France?")

    client = signed_in(owner)  # the session cookie is valid for the live server too: same database
    cookies = {"sessionid": client.cookies["sessionid"].value}
    events = []
    with httpx.stream("GET", f"{web_server}/m/{reply.pk}/events", cookies=cookies, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line[5:])))
                if kind == "done":
                    break
    reply = wait_until_finished(reply)
    streamed = "".join(data["text"] for kind, data in events if kind == "token")
    assert events[-1][0] == "done" and events[-1][1]["status"] == "done"
    assert reply.status == Message.Status.DONE and "Paris" in reply.content
    assert streamed == reply.content
    assert len(reply.tokens) > 1
    text, logprob, alternatives = reply.tokens[0]
    assert text in reply.content and logprob <= 0
    assert len(alternatives) == 5 and alternatives[0][1] >= alternatives[-1][1]
    assert reply.context["prompt"] > 0 and reply.context["turns_dropped"] == 0

    # A viewer who arrives after the end gets the whole answer at once, rendered and sanitized.
    with httpx.stream("GET", f"{web_server}/m/{reply.pk}/events", cookies=cookies, timeout=30) as response:
        body = response.read().decode()
    assert body.startswith("event: done") and "Paris" in body
    # ... and a stranger gets nothing.
    assert httpx.get(f"{web_server}/m/{reply.pk}/events", timeout=30).status_code == 404


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stop_keeps_the_partial_answer(models_ready, celery_worker_process):
    owner = make_user("ada")
    assistant = make_assistant(owner, max_tokens=400, temperature=0.7)
    conversation = services.conversation_start(assistant=assistant, owner=owner)
    _, reply = services.message_send(conversation=conversation, content="Write a long story about a lighthouse.")
    deadline = time.monotonic() + 120
    while len(Message.objects.get(pk=reply.pk).content) < 20:
        assert time.monotonic() < deadline, "no tokens arrived"
        time.sleep(0.1)
    services.reply_stop(message=reply)
    reply = wait_until_finished(reply)
    assert reply.status == Message.Status.STOPPED and reply.finish_reason == "stopped"
    assert len(reply.content) >= 20 and len(reply.tokens) < 400


def test_an_answer_whose_worker_vanished_is_failed_by_the_periodic_task_not_by_a_page_view(models_ready):
    owner = make_user("ada")
    conversation = services.conversation_start(assistant=make_assistant(owner), owner=owner)
    _, reply = services.message_send(conversation=conversation, content="Hello")
    _, fresh = services.message_send(
        conversation=services.conversation_start(assistant=conversation.assistant, owner=owner), content="Hi"
    )
    from django.utils import timezone

    Message.objects.filter(pk=reply.pk).update(
        status=Message.Status.STREAMING, content="Half an ans", updated_at=timezone.now() - timedelta(seconds=151)
    )
    Message.objects.filter(pk=fresh.pk).update(status=Message.Status.STREAMING, updated_at=timezone.now())
    client = signed_in(owner)
    client.get(reverse("chat:conversation", args=[conversation.pk]))
    reply.refresh_from_db()
    assert reply.status == Message.Status.STREAMING  # a GET writes nothing

    assert replies_fail_abandoned() == 1
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR and reply.content == "Half an ans"
    assert Message.objects.get(pk=fresh.pk).status == Message.Status.STREAMING  # still within its time
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert "worker stopped" in page and "Retry" in page


def test_the_playground_tokenizes_and_continues_raw_text(models_ready, inference_server):
    client = signed_in(make_user("ada"))
    page = client.post(reverse("chat:playground"), {"action": "tokenize", "text": "Hello world"}).content.decode()
    assert "2 tokens" in page and "19556" in page  # SmolLM2's id for "Hello"
    page = client.post(
        reverse("chat:playground"),
        {"action": "complete", "prompt": "The capital of France is", "max_tokens": "5", "temperature": "0"},
    ).content.decode()
    assert "Paris" in page and "5 generated" in page
    response = client.post(reverse("chat:playground"), {"action": "complete", "prompt": "x", "max_tokens": "many"})
    assert response.status_code == 200 and "must be numbers" in response.content.decode()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_answer_leaves_the_text_and_the_answer_can_be_retried(
    models_ready, celery_worker_process, inference_server
):
    """kill -9 a real worker while it streams: the text so far stays, the answer is marked failed once
    it has been silent too long, and Retry (on the surviving worker) writes a complete answer."""
    from apps.chat.tasks import reply_generate_task
    from tests.conftest import celery_worker

    owner = make_user("ada")
    assistant = make_assistant(owner, max_tokens=300, temperature=0.8)
    conversation = services.conversation_start(assistant=assistant, owner=owner)
    question = Message.objects.create(conversation=conversation, role="user", content="Tell me a long story.")
    doomed = Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        status=Message.Status.PENDING,
        assistant_version=assistant.current_version,
    )
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=doomed)

    queue = f"chat-doomed-{os.getpid()}"  # only the worker about to be killed listens here
    with celery_worker(f"doomed-{os.getpid()}", queues=(queue,)) as worker:
        reply_generate_task.apply_async(args=[str(doomed.pk)], queue=queue)
        deadline = time.monotonic() + 120
        while len(Message.objects.get(pk=doomed.pk).content) < 30:
            assert time.monotonic() < deadline and worker.poll() is None, "the doomed worker never streamed"
            time.sleep(0.1)
        for process in [*psutil.Process(worker.pid).children(recursive=True), worker]:  # the pool process streams
            process.send_signal(signal.SIGKILL)
        worker.wait(10)
    doomed.refresh_from_db()
    assert doomed.status == Message.Status.STREAMING and len(doomed.content) >= 30  # kept, not lost

    # The periodic task (beat sends it) runs in a real worker, here one that calls 2 s of silence too long.
    from apps.chat.tasks import replies_fail_abandoned_task

    time.sleep(2.5)
    queue = f"abandoned-{os.getpid()}"
    with celery_worker(queue, queues=(queue,), env={"CHAT_ANSWER_ABANDONED_AFTER_SECONDS": "2"}):
        assert replies_fail_abandoned_task.apply_async(queue=queue).get(timeout=60) == 1
    client = signed_in(owner)
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    doomed.refresh_from_db()
    assert doomed.status == Message.Status.ERROR and "worker stopped" in page and "Retry" in page
    assert len(doomed.content) >= 30

    client.post(reverse("chat:regenerate", args=[doomed.pk]))
    retried = Message.objects.exclude(pk=doomed.pk).get(conversation=conversation, role="assistant")
    retried = wait_until_finished(retried, timeout=180)
    assert retried.status == Message.Status.DONE and retried.content
    assert Message.objects.get(pk=doomed.pk).status == Message.Status.ERROR  # the old branch stays as it was


def test_a_refused_first_message_leaves_no_empty_conversation(models_ready):
    owner = make_user("ada")
    assistant = make_assistant(owner)
    page = signed_in(owner).post(reverse("chat:start", args=[assistant.slug]), {"content": "   "})
    assert page.status_code == 200 and "empty" in page.content.decode()
    assert not Conversation.objects.exists()
