"""Chat with the app in headless Chromium and save a screenshot (used by the browser test and
for docs/figures/serving_chat.png).

    python -m serving.screenshot --model models/tiny-chat --backend gguf \
        --out docs/figures/serving_chat.png

Needs Playwright's Python package (dev extra) and Debian's chromium (`make system-deps`); the app
itself never imports this module.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from serving.helpers import ArgumentParser, UsageError, cli_main, made_by_hint, require_model

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Debian's chromium is not installed; run `make system-deps` "
                           "(apt-get install chromium)")
    return path


def chat_in_browser(url: str, question: str, screenshot: Path, max_new_tokens: int | None = None,
                    timeout_ms: int = 60_000, key: str | None = None) -> tuple[str, str]:
    """Open the app (signing in with `key` when the app has one), optionally set max new
    tokens, send `question`, wait for the finished reply.
    Returns (reply text, the last-reply stats line)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 860})
            page.goto(url)
            if key is not None:  # Gradio's sign-in form: any user name, the key as password
                page.get_by_label("username").fill("browser")
                page.get_by_label("password").fill(key)
                page.get_by_role("button", name="Login").click()
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
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            return reply, stats.inner_text()
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m serving.screenshot", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/tiny-chat"))
    p.add_argument("--backend", default="gguf")
    p.add_argument("--question", default="What is 12 + 34?")
    p.add_argument("--out", type=Path, default=Path("docs/figures/serving_chat.png"))
    args = p.parse_args(argv)
    require_model(args.model, made_by_hint(args.model))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "serving.app", "--model", str(args.model),
                             "--backend", args.backend, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait for the URL line
            if "running at" in line:
                break
        else:
            raise UsageError(f"the app exited with status {proc.wait()}; run it alone to see why: "
                             f"python -m serving.app --model {args.model} --backend {args.backend}")
        time.sleep(0.5)
        reply, stats = chat_in_browser(f"http://127.0.0.1:{port}/", args.question, args.out)
        print(f"{args.question!r} -> {reply!r}; {stats}; saved {args.out}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    cli_main(main)()
