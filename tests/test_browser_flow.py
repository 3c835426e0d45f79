"""The whole product in a real browser: log in, build an assistant, chat with a streamed answer, reload
mid-stream, open the token inspector, use the playground, the API keys and the status page, share the link, chat
through it anonymously, and work in the admin.

All of it under the site's Content-Security-Policy: every page must carry the header, and the browser must
report no violation, no dialog and no uncaught script error on any of them.

Headless Debian chromium (Playwright) against the real stack: uvicorn, the Celery worker, Redis,
Postgres and the inference server with the real SmolLM2. Screenshots of every step are kept in
var/test-artifacts/<test name>/.
"""

import re

import pytest
from playwright.sync_api import expect

from apps.accounts.services import admin_ensure, user_create
from tests.browser import BrowserWatch, browser_watch, login

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PASSWORD = "correct horse battery staple"
STORY = "Write a long story about a lighthouse keeper and a storm."


def test_build_chat_reload_inspect_share_and_chat_anonymously(web_server, browser, artifacts_dir, models_ready):
    user_create(username="grace", email="grace@example.com", password=PASSWORD)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watches = [browser_watch(context)]
    page = context.new_page()
    page.set_default_timeout(60_000)

    # 1. Log in.
    login(page, web_server, "grace", PASSWORD)

    # 2. Create an assistant with instructions.
    page.goto(f"{web_server}/assistants/new/")
    page.fill("input[name=name]", "Lighthouse Bard")
    page.fill("textarea[name=instructions]", "You are a storyteller. Write vivid, long stories for {{user_name}}.")
    page.fill("input[name=max_tokens]", "300")
    page.fill("input[name=temperature]", "0.8")
    page.click("form#assistant-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("version 1")

    # The live preview beside the form streams an answer from the engine with the unsaved settings.
    page.fill("[data-preview-message]", "Say hello in five words.")
    page.click("[data-preview-send]")
    preview = page.locator(".preview-turn-assistant").last
    expect(preview).not_to_have_class(re.compile("is-streaming"), timeout=120_000)
    assert preview.inner_text().strip() and page.locator(".preview-turn-error").count() == 0
    page.screenshot(path=artifacts_dir / "1-assistant-created-with-preview.png", full_page=True)

    # 3. Chat, and see the answer stream in.
    page.click("text=Chat with it")
    page.fill("[data-composer-input]", STORY)
    page.click("[data-send]")
    page.wait_for_url("**/c/**")
    conversation_url = page.url
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator("[data-body]")).not_to_be_empty(timeout=90_000)
    expect(answer).to_have_class(re.compile("is-streaming"))
    page.screenshot(path=artifacts_dir / "2-streaming.png", full_page=True)

    # 4. Reload mid-stream: the answer is still generating in the worker, and the page follows it.
    before_reload = len(answer.locator("[data-body]").inner_text())
    page.reload()
    answer = page.locator("article.msg-assistant").last
    assert answer.get_attribute("data-live"), "the answer had finished before the reload: not mid-stream"
    expect(answer.locator("[data-status]")).to_have_text("Done", timeout=180_000)
    final_text = answer.locator("[data-body]").inner_text()
    assert len(final_text) > before_reload
    page.screenshot(path=artifacts_dir / "3-completed-after-reload.png", full_page=True)

    # 5. The token inspector: tokens coloured by probability, alternatives on hover.
    answer.locator("[data-inspect]").click()
    tokens = answer.locator(".tok")
    expect(tokens.first).to_be_visible()
    assert tokens.count() > 20
    tokens.nth(3).hover()
    expect(tokens.nth(3).locator(".tok-tip")).to_be_visible()
    assert tokens.nth(3).locator(".tok-alt").count() == 5
    page.screenshot(path=artifacts_dir / "4-token-inspector.png", full_page=True)

    # The playground's tokenizer, an API key, and the status page refreshing itself through htmx.
    page.goto(f"{web_server}/playground/")
    page.fill("#tok-text", "Hello, lighthouse.")
    page.click("form:has(#tok-text) button[type=submit]")
    expect(page.locator(".token-chip").first).to_be_visible()
    page.goto(f"{web_server}/accounts/api-keys/")
    page.fill("#api-key-name", "Browser test")
    page.click("form:has(#api-key-name) button[type=submit]")
    assert page.locator("#new-api-key").input_value().startswith("atl_")
    page.goto(f"{web_server}/status")
    with page.expect_response(lambda r: r.url.endswith("/status") and r.request.headers.get("hx-request") == "true"):
        pass  # the page polls every 5 s
    expect(page.locator("#checks")).to_be_visible()

    # 6. Share: make it link-visible and take the share URL from the edit page.
    page.goto(f"{web_server}/assistants/")
    page.click("text=Edit")
    page.check("input[name=visibility][value=link]")
    page.click("form#assistant-form button[type=submit]")
    share_url = page.locator("#share-url").input_value()
    assert share_url.startswith(web_server) and "/s/" in share_url
    page.screenshot(path=artifacts_dir / "5-share-link.png", full_page=True)

    # 7. A fresh anonymous browser context opens the link and chats.
    visitor = browser.new_context(viewport={"width": 1280, "height": 900})
    watches.append(browser_watch(visitor))
    anonymous = visitor.new_page()
    anonymous.set_default_timeout(60_000)
    anonymous.goto(share_url)
    expect(anonymous.locator("h1")).to_have_text("Lighthouse Bard")
    assert "storyteller" not in anonymous.content()  # visitors never see the instructions
    anonymous.fill("[data-composer-input]", "Tell me a two-line poem about the sea.")
    anonymous.click("[data-send]")
    anonymous.wait_for_url("**/c/**")
    reply = anonymous.locator("article.msg-assistant").last
    expect(reply.locator("[data-status]")).to_have_text("Done", timeout=180_000)
    assert reply.locator("[data-body]").inner_text().strip()
    # The context gauge was drawn live from the answer's budget (this page was rendered before it).
    expect(anonymous.locator("[data-gauge]")).to_be_visible()
    expect(anonymous.locator("[data-gauge-tokens=reserved]")).to_have_text("300")
    anonymous.screenshot(path=artifacts_dir / "6-anonymous-chat.png", full_page=True)

    # The owner's conversation stays theirs: the visitor gets a 404 for its URL.
    assert anonymous.goto(conversation_url).status == 404
    visitor.close()
    context.close()
    assert all((artifacts_dir / name).stat().st_size > 10_000 for name in ("2-streaming.png", "4-token-inspector.png"))

    # 8. The admin: its own pages, scripts and styles run under the same policy.
    admin_ensure(username="root", password=PASSWORD)
    staff = browser.new_context(viewport={"width": 1280, "height": 900})
    watches.append(browser_watch(staff))
    admin = staff.new_page()
    admin.set_default_timeout(60_000)
    login(admin, web_server, "root", PASSWORD)
    admin.goto(f"{web_server}/admin/")
    admin.click("text=Conversations")
    admin.locator("#result_list tbody a").first.click()  # a change form with its messages inline
    expect(admin.locator(".inline-group")).to_be_visible()
    admin.goto(f"{web_server}/admin/assistants/assistant/")
    admin.locator("#result_list tbody input.action-select").first.check()
    admin.select_option("select[name=action]", "unlist")
    admin.click("button[name=index]")
    expect(admin.locator(".messagelist")).to_be_visible()
    admin.screenshot(path=artifacts_dir / "7-admin.png", full_page=True)
    staff.close()

    for watch in watches:
        _assert_clean_under_csp(watch)


def _assert_clean_under_csp(watch: BrowserWatch) -> None:
    assert watch.documents and watch.documents_without_csp() == []
    assert watch.violations == []
    assert watch.dialogs == [] and watch.page_errors == []
