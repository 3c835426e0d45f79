"""The adversarial suite in real headless Chromium: a conversation whose answers are the suite's inputs, stored
as assistant messages, opened by its owner and as a public snapshot.

What the browser built from each answer is checked with the suite's own functions; the network is recorded and
nothing may leave for another host; no dialog, script error or CSP violation may happen; every page carries the
CSP header; and following the userinfo and IDN links lands on the interstitial, which names the real host.
"""

import pytest

from apps.accounts.services import user_create
from apps.assistants.selectors import chat_model_default
from apps.assistants.services import AssistantConfig, assistant_create
from apps.chat import services
from apps.chat.models import Message
from tests.browser import browser_watch, login
from tests.core.adversarial import CASES, case_check, invariants_check
from tests.html_tree import html_parse

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PASSWORD = "correct horse battery staple"
# Links whose interstitial must name the real host: (case name, host, the name's Unicode form).
FOLLOWED = [
    ("userinfo pretending to be the bank", "attacker.example", None),
    ("IDN with one Cyrillic letter", "xn--pple-43d.com", "\u0430pple.com"),
    ("IDN all Cyrillic", "xn--80aa0cbo65f.com", "\u0440\u0430\u0443\u0440\u0430\u04cf.com"),
]


def _adversarial_conversation(owner):
    """A conversation with one question and answer per case, on one branch, written straight to the database
    (not through the worker, which would answer with the model)."""
    config = AssistantConfig(name="Injected", base_model=chat_model_default(), max_tokens=24)
    assistant = assistant_create(owner=owner, config=config)
    conversation = services.conversation_start(assistant=assistant, owner=owner)
    parent = None
    for case in CASES:
        question = Message.objects.create(
            conversation=conversation, parent=parent, role=Message.Role.USER, content=f"Case: {case.name}"
        )
        parent = Message.objects.create(
            conversation=conversation,
            parent=question,
            role=Message.Role.ASSISTANT,
            status=Message.Status.DONE,
            content=case.markdown,
            assistant_version=assistant.current_version,
        )
    conversation.title, conversation.current_leaf = "Adversarial answers", parent
    conversation.save(update_fields=["title", "current_leaf"])
    return conversation, services.conversation_snapshot_share(conversation=conversation)


def _check_answers(page) -> None:
    """Each answer as Chromium parsed it (innerHTML of its body) holds the case's safe outcome."""
    bodies = page.locator("article.msg-assistant [data-body]")
    assert bodies.count() == len(CASES)
    for index, case in enumerate(CASES):
        tree = html_parse(bodies.nth(index).inner_html())
        invariants_check(tree)
        case_check(case, tree)
    for link in page.locator("article.msg-assistant [data-body] a").all():
        link.hover()  # an injected onmouseover would run now
        link.focus()


def test_adversarial_answers_and_their_snapshot_in_chromium(web_server, browser, artifacts_dir, models_ready):
    owner = user_create(username="mallory-target", email="target@example.com", password=PASSWORD)
    conversation, snapshot_token = _adversarial_conversation(owner)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = browser_watch(context)
    page = context.new_page()
    page.set_default_timeout(30_000)
    login(page, web_server, "mallory-target", PASSWORD)

    page.goto(f"{web_server}/c/{conversation.pk}/")
    _check_answers(page)
    page.screenshot(path=artifacts_dir / "1-conversation.png", full_page=True)

    for index, (name, host, unicode_form) in enumerate(FOLLOWED):
        answer = page.locator("article.msg-assistant").nth(next(i for i, c in enumerate(CASES) if c.name == name))
        answer.locator("[data-body] a").first.click()
        page.wait_for_url("**/out?u=**")
        assert page.locator("[data-out-host]").inner_text() == host
        if unicode_form:
            assert page.locator("[data-out-host-unicode]").inner_text() == unicode_form
            assert page.locator("[data-out-warnings] li").count() >= 1
        assert page.locator("[data-out-continue]").get_attribute("href").startswith(f"https://{host}/")
        page.screenshot(path=artifacts_dir / f"2-interstitial-{index}.png", full_page=True)
        page.go_back()

    visitor = browser.new_context(viewport={"width": 1280, "height": 900})
    visitor_watch = browser_watch(visitor)
    anonymous = visitor.new_page()
    anonymous.goto(f"{web_server}/snapshot/{snapshot_token}/")
    _check_answers(anonymous)
    anonymous.screenshot(path=artifacts_dir / "3-snapshot.png", full_page=True)
    visitor.close()
    context.close()

    # A control, so that silence above means something: a deliberate violation on this site is reported.
    probe_context = browser.new_context()
    probe_watch = browser_watch(probe_context)
    probe = probe_context.new_page()
    probe.goto(f"{web_server}/snapshot/{snapshot_token}/")
    probe.evaluate("() => { const img = new Image(); img.src = 'https://attacker.example/probe.png'; }")
    probe.wait_for_function("() => window.__cspViolations.length > 0")
    probe_context.close()
    assert [violation["directive"] for violation in probe_watch.violations] == ["img-src"]

    for recorded in (watch, visitor_watch):
        assert recorded.documents and not recorded.documents_without_csp()
        assert any(url.endswith(".css") for url in recorded.requests)  # the recorder saw the page's own loads
        assert recorded.foreign_requests() == []
        assert recorded.violations == []
        assert recorded.dialogs == [] and recorded.page_errors == [] and recorded.console_errors == []
