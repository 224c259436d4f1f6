"""Open a built site in headless Chromium, as a visitor would, with every request to another host
blocked and recorded: used by the tests and bench/bench_web.py.

    with serve_folder("site") as url, chromium() as browser, \
            open_site(browser, url) as (page, blocked):
        page.evaluate("window.mlzero.chat([{role: 'user', content: 'What is 12 + 34?'}])")

Needs Playwright's Python package (dev extra) and Debian's chromium (`make system-deps`).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from serving.screenshot import CHROMIUM_ARGS, chromium_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # one line per request would bury test output
        pass


@contextlib.contextmanager
def serve_folder(folder: str | Path) -> Iterator[str]:
    """Serve `folder` as `python -m http.server` would, on a free local port; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium (Playwright's sync API: one at a time per thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_site(browser: Any, url: str, timeout_ms: int = 120_000,
              wait_ready: bool = True) -> Iterator[tuple[Any, list[str]]]:
    """The page at `url` in a fresh browser context (no cache, no storage from other pages);
    yields (page, blocked), where `blocked` lists every URL the page tried to fetch from another
    origin (each one aborted). With `wait_ready` it returns once the model has loaded or failed
    to (window.mlzero.ready or .error)."""
    origin = urlsplit(url)[:2]
    blocked: list[str] = []

    def route(r: Any) -> None:
        if urlsplit(r.request.url)[:2] == origin or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context = browser.new_context()
    try:
        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        page.goto(url)
        if wait_ready:
            page.wait_for_function("window.mlzero && (window.mlzero.ready || window.mlzero.error)")
        yield page, blocked
    finally:
        context.close()
