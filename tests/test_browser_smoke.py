"""The real-browser infrastructure end to end: chromium logs in through the real form of the real web app."""

import pytest

from tests.browser import login

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_login_shows_dashboard(web_server, browser, artifacts_dir):
    from apps.accounts.services import user_create

    user_create(username="browser-smoke", email="smoke@example.com", password="a-long-test-password-1")

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        login(page, web_server, "browser-smoke", "a-long-test-password-1")
        page.locator(".user-name").wait_for()
        assert page.locator(".user-name").inner_text().strip() == "browser-smoke"

        screenshot = artifacts_dir / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.is_file()
        assert screenshot.stat().st_size > 0
    finally:
        context.close()
