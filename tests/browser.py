"""Helpers for the real-browser tests (Playwright driving Debian's chromium against the `web_server` fixture)."""

from __future__ import annotations

from playwright.sync_api import Page

LOGIN_PATH = "/accounts/login/"


def login(page: Page, base_url: str, username: str, password: str, *, timeout: float = 15_000) -> None:
    """Log in through the real login form and wait until the browser has left the login page."""
    page.goto(f"{base_url}{LOGIN_PATH}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")
    # A failed login re-renders the form at the same URL, so this times out instead of passing.
    page.wait_for_url(lambda url: LOGIN_PATH not in url, timeout=timeout)
