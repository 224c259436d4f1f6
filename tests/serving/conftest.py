"""A served chat app over the tiny fixture model, started once per session as a real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

QUESTION = "What is 12 + 34?"
MAX_NEW_TOKENS = 16  # short replies keep the served tests fast; the cap logic is unit-tested


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(argv: list[str], port: int, log: Path, timeout: float = 120) -> subprocess.Popen:
    """Start `argv` (a serving.app command line) and wait until it prints its URL."""
    env = {**os.environ, "MLZERO_THREADS": "1", "MLZERO_GGUF_THREADS": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    out = log.open("w")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if f":{port}" in log.read_text() and "running at" in log.read_text():
            return proc
        time.sleep(0.3)
    stop_app(proc)
    raise AssertionError(f"app did not print its URL within {timeout} s:\n"
                         f"{log.read_text()[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> Path:
    """The model the served tests chat with: a small random Llama with the project's tokenizer and
    chat template (the export tests' parity model). Random weights far from ties give a long,
    varied greedy reply; the tiny trained fixtures collapse to whitespace after a few steps, and
    the trained default is served in test_default_model.py."""
    from tests.export.conftest import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("served") / "random-llama")


# Per module, not per session: an idle server left running would slow the long training run in
# test_default_model.py (2-thread PyTorch stalls when another process takes CPU).
@pytest.fixture(scope="module")
def served_app(served_model: Path, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("served") / "app.log"
    proc = start_app([sys.executable, "-m", "serving.app", "--model", str(served_model),
                      "--backend", "torch", "--port", str(port)], port, log)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_app(proc)


@pytest.fixture(scope="session")
def chat_case(served_model: Path) -> tuple[str, str]:
    """(question, the backend's own greedy reply): what the app must show, piece for piece."""
    from serving.runtimes import load_backend

    backend = load_backend(served_model, "torch")
    reply = backend.generate([{"role": "user", "content": QUESTION}], MAX_NEW_TOKENS)
    assert reply.strip(), "the served model's greedy reply is empty; pick another question"
    return QUESTION, reply
