"""The chat page in a real browser: Debian's headless Chromium driven by Playwright.

CI installs chromium (`make system-deps`); without it this test fails, it does not skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from serving.screenshot import chat_in_browser
from tests.serving.conftest import MAX_NEW_TOKENS


def test_chromium_is_installed():
    assert shutil.which("chromium") or shutil.which("chromium-browser"), (
        "Debian's chromium is not installed; run `make system-deps` (apt-get install chromium) — "
        "the browser test must run, not skip")


def test_browser_chat_shows_the_streamed_greedy_reply(served_app: str, chat_case: tuple[str, str],
                                                      tmp_path: Path):
    question, expected_reply = chat_case
    shot = tmp_path / "serving_chat.png"
    reply, stats = chat_in_browser(served_app, question, shot, max_new_tokens=MAX_NEW_TOKENS)
    # max new tokens set through the settings slider: a 64-token reply would not match
    assert reply.strip() == expected_reply.strip()
    assert "tokens/s" in stats
    assert shot.stat().st_size > 10_000  # a real rendered page, not an empty image
