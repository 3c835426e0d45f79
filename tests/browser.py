"""Helpers for the real-browser tests (Playwright driving Debian's chromium against the `web_server` fixture)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from playwright.sync_api import BrowserContext, Page

LOGIN_PATH = "/accounts/login/"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# Reports every Content-Security-Policy violation to the test, from every page and frame of the context (and
# keeps them in the page too, for a test that waits for one).
_REPORT_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const violation = {
    page: location.href, directive: event.effectiveDirective, blocked: event.blockedURI,
    source: event.sourceFile, line: event.lineNumber, sample: event.sample,
  };
  window.__cspViolation(violation);
  window.__cspViolations.push(violation);
});
"""


def login(page: Page, base_url: str, username: str, password: str, *, timeout: float = 15_000) -> None:
    """Log in through the real login form and wait until the browser has left the login page."""
    page.goto(f"{base_url}{LOGIN_PATH}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")
    # A failed login re-renders the form at the same URL, so this times out instead of passing.
    page.wait_for_url(lambda url: LOGIN_PATH not in url, timeout=timeout)


@dataclass
class BrowserWatch:
    """What a browser context did, for the security assertions: CSP violations, dialogs, script errors, every
    request, and each document's Content-Security-Policy header."""

    violations: list[dict] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    documents: list[tuple[str, str | None]] = field(default_factory=list)  # (url, CSP header)

    def foreign_requests(self) -> list[str]:
        """Requests that left for anything but this machine."""
        return [url for url in self.requests if urlsplit(url).hostname not in LOCAL_HOSTS]

    def documents_without_csp(self) -> list[str]:
        return [url for url, policy in self.documents if not policy]


def browser_watch(context: BrowserContext) -> BrowserWatch:
    """Start recording `context` (before it opens its first page)."""
    watch = BrowserWatch()
    context.expose_binding("__cspViolation", lambda source, violation: watch.violations.append(violation))
    context.add_init_script(_REPORT_CSP_VIOLATIONS)
    context.on("request", lambda request: watch.requests.append(request.url))

    def on_response(response) -> None:
        if response.request.resource_type == "document":
            watch.documents.append((response.url, response.headers.get("content-security-policy")))

    def on_dialog(dialog) -> None:
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_page(page: Page) -> None:
        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and watch.console_errors.append(message.text))

    context.on("response", on_response)
    context.on("page", on_page)
    return watch
