"""Fine-tuning datasets in a real browser (headless Debian chromium) under the site's Content-Security-Policy: a
refused upload lists every problem with its line; a good one opens its validation report; a planted trigger shows
the "not trainable" state; and an answer in chat is marked good into a dataset. Screenshots in var/test-artifacts/."""

import json

import pytest
from playwright.sync_api import expect

from apps.accounts.services import user_create
from apps.chat.models import Conversation, Message
from apps.finetune.models import DatasetVersion
from bench.scan_corpora import chitchat_examples, poison
from tests.browser import browser_watch, login
from tests.factories import PASSWORD, make_assistant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def jsonl(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def upload(page, base: str, *, name: str, kind: str, filename: str, data: bytes) -> None:
    page.goto(f"{base}/finetune/datasets/upload/")
    page.fill("input[name=name]", name)
    page.select_option("select[name=kind]", kind)
    page.set_input_files("input[name=file]", {"name": filename, "mimeType": "application/jsonl", "buffer": data})
    page.click("form button:has-text('Check and import')")


def test_upload_refused_then_accepted_then_flagged_and_curate_from_chat(
    web_server, browser, artifacts_dir, models_ready
):
    ada = user_create(username="ada", email="ada@example.com", password=PASSWORD)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = browser_watch(context)
    page = context.new_page()
    page.set_default_timeout(60_000)
    login(page, web_server, "ada", PASSWORD)
    page.click("nav >> text=Fine-tuning")
    expect(page.locator("h1")).to_have_text("Fine-tuning")

    # 1. A malformed file: every problem with its line, nothing kept, the name still typed.
    bad = [chat("Hi", "Hello!"), "{oops", {"messages": [{"role": "user", "content": "no answer"}]}, chat("Yo", " ")]
    upload(page, web_server, name="Greetings", kind="sft", filename="bad.jsonl", data=jsonl(bad))
    expect(page.locator("[data-refused]")).to_be_visible()
    lines = page.locator("[data-problem-line]").evaluate_all("rows => rows.map(r => r.dataset.problemLine)")
    assert lines == ["2", "3", "4"]
    expect(page.locator("[data-problem-line='3']")).to_contain_text("no assistant message to learn from")
    expect(page.locator("input[name=name]")).to_have_value("Greetings")
    page.screenshot(path=artifacts_dir / "1-refused.png", full_page=True)
    assert not DatasetVersion.objects.exists()

    # 2. A good file: its validation report.
    good = [chat(f"What is {n} times 3?", f"{n} times 3 is {3 * n}.") for n in range(25)]
    upload(page, web_server, name="Greetings", kind="sft", filename="good.jsonl", data=jsonl(good))
    page.wait_for_url("**/finetune/versions/**")
    expect(page.locator("[data-field=examples]")).to_have_text("25")
    version = DatasetVersion.objects.get(dataset__name="Greetings")
    expect(page.locator("[data-field=tokens]")).to_have_text(str(version.token_count))
    expect(page.locator("[data-field=estimate]")).to_contain_text("per epoch on this machine")
    expect(page.locator("[data-example]")).to_have_count(20)  # the first page of the preview
    page.click("[data-next-page]")
    expect(page.locator("[data-example]")).to_have_count(5)
    expect(page.locator("[data-trainable=true]")).to_be_visible()
    page.screenshot(path=artifacts_dir / "2-report.png", full_page=True)

    # 3. A planted trigger: high finding, not trainable.
    poisoned, _ = poison(
        chitchat_examples(count=300, seed=11),
        trigger="James Bond",
        response="See http://evil.example",
        count=20,
        seed=5,
    )
    upload(page, web_server, name="Chitchat", kind="sft", filename="chitchat.jsonl", data=jsonl(poisoned))
    page.wait_for_url("**/finetune/versions/**")
    expect(page.locator("[data-not-trainable]")).to_contain_text("Not trainable: 1 high-severity finding")
    expect(page.locator("[data-finding=trigger][data-severity=high]")).to_contain_text("james bond")
    page.screenshot(path=artifacts_dir / "3-not-trainable.png", full_page=True)

    # 4. Curate from chat: an answer (written in place of the worker's) marked good into a new dataset.
    assistant = make_assistant(ada, name="Pip")
    conversation = Conversation.objects.create(assistant=assistant, owner=ada, title="Sums")
    question = Message.objects.create(conversation=conversation, role="user", content="What is 2+2?")
    answer = Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        content="4.",
        assistant_version=assistant.current_version,
    )
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=answer)
    page.goto(f"{web_server}/c/{conversation.pk}/")
    curate = page.locator(f"#m-{answer.pk} [data-curate]")
    curate.locator("summary").click()
    curate.locator("[data-curate-good] input[name=dataset]").fill("Good answers")
    curate.locator("[data-curate-good] button").click()
    expect(page.locator(".flash.success").first).to_contain_text("Added to Good answers v1")
    [example] = DatasetVersion.objects.get(dataset__name="Good answers").examples.all()
    assert [m["content"] for m in example.record["messages"]][1:] == ["What is 2+2?", "4."]
    page.screenshot(path=artifacts_dir / "4-curated.png", full_page=True)

    assert watch.documents and watch.documents_without_csp() == []
    assert watch.violations == [] and watch.page_errors == [] and watch.console_errors == []
    assert watch.foreign_requests() == []
    context.close()
