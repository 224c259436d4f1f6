"""The chat page in a real browser: Debian's headless Chromium driven by Playwright.

CI installs chromium (`make system-deps`); without it this test fails, it does not skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.serving.conftest import MAX_NEW_TOKENS, QUESTION

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, ("Debian's chromium is not installed; run `make system-deps` "
                  "(apt-get install chromium) — this end-to-end test must not be skipped")
    return path


def chat_in_browser(url: str, question: str, screenshot: Path, max_new_tokens: int | None = None,
                    timeout_ms: int = 60_000) -> tuple[str, str]:
    """Open the app, optionally set max new tokens, send `question`, wait for the finished reply.
    Returns (reply text, the last-reply stats line)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 860})
            page.goto(url)
            box = page.locator("#chat-input textarea")
            box.wait_for(timeout=timeout_ms)
            if max_new_tokens is not None:
                field = page.get_by_label("number input for Max new tokens")
                if not field.is_visible():  # the settings accordion is closed
                    page.locator("button.label-wrap", has_text="Settings").click()
                field.fill(str(max_new_tokens))
                field.press("Enter")
            box.fill(question)
            box.press("Enter")
            # The stats line changes only when the reply is complete.
            stats = page.locator("#reply-stats")
            expect(stats).to_contain_text("tokens/s", timeout=timeout_ms)
            reply = page.locator('#chatbot [data-testid="bot"]').last.inner_text()
            page.screenshot(path=str(screenshot))
            return reply, stats.inner_text()
        finally:
            browser.close()


def test_browser_chat_shows_the_streamed_greedy_reply(served_app: str, expected_reply: str,
                                                      tmp_path: Path):
    shot = tmp_path / "serving_chat.png"
    reply, stats = chat_in_browser(served_app, QUESTION, shot, max_new_tokens=MAX_NEW_TOKENS)
    assert reply.strip() == expected_reply.strip()
    assert "tokens/s" in stats
    assert shot.stat().st_size > 10_000  # a real rendered page, not an empty image
