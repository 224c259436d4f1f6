"""The app as users run it: a real server process, the /chat API through gradio_client, CLI errors."""

from __future__ import annotations

import shutil
from pathlib import Path

from gradio_client import Client

from serving.chat import NOTICE
from tests.conftest import run_cli
from tests.serving.conftest import MAX_NEW_TOKENS, QUESTION


def test_chat_api_returns_the_backends_greedy_reply(served_app: str, chat_case: tuple[str, str]):
    question, expected_reply = chat_case
    client = Client(served_app, verbose=False)
    reply = client.predict(question, 0.0, MAX_NEW_TOKENS, api_name="/chat")
    assert reply == expected_reply


def test_chat_api_streams_pieces_that_grow_into_the_reply(served_app: str, chat_case: tuple[str, str]):
    question, expected_reply = chat_case
    job = Client(served_app, verbose=False).submit(question, 0.0, MAX_NEW_TOKENS, api_name="/chat")
    final = job.result(timeout=120)
    outputs = [o for o in job.outputs() if o]
    assert final == expected_reply
    assert all(expected_reply.startswith(o) for o in outputs)  # every update is a prefix


def test_chat_api_answers_bad_input_with_a_message(served_app: str):
    client = Client(served_app, verbose=False)
    assert client.predict("", 0.0, 8, api_name="/chat").startswith(NOTICE)
    huge = client.predict("9" * 50_000, 0.0, 8, api_name="/chat")
    assert huge.startswith(NOTICE) and "limit" in huge
    # the server is still fine afterwards
    assert not client.predict(QUESTION, 0.0, 4, api_name="/chat").startswith(NOTICE)


def test_missing_model_folder_is_one_line_and_nonzero(tmp_path: Path):
    proc = run_cli("-m", "serving.app", "--model", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr


def test_missing_export_is_one_line_and_nonzero(tiny_chat: Path, tmp_path: Path):
    bare = tmp_path / "tiny-chat"  # a copy without exports, whatever other tests add to the fixture
    shutil.copytree(tiny_chat, bare, ignore=shutil.ignore_patterns("onnx", "gguf"))
    for runtime, hint in (("onnx", "export_onnx.py"), ("gguf", "export_gguf.py")):
        proc = run_cli("-m", "serving.app", "--model", str(bare), "--backend", runtime, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().startswith("error:") and hint in proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
