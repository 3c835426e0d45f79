"""Take the README's screenshots of a running Atelier with headless Chromium (Debian's, never a download).

ATELIER_ADMIN_PASSWORD=... .venv/bin/python docs/screenshot.py [http://127.0.0.1:8000]
"""

import os
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    out = Path(__file__).resolve().parent
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=username]", os.environ.get("ATELIER_ADMIN_USERNAME", "admin"))
        page.fill("input[name=password]", os.environ["ATELIER_ADMIN_PASSWORD"])
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.screenshot(path=out / "dashboard.png")
        page.goto(f"{base}/status")
        page.screenshot(path=out / "status.png")
        browser.close()


if __name__ == "__main__":
    main()
