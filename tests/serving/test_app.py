"""The app as users run it: a real server process, the /chat API through gradio_client, CLI
errors."""

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


def test_chat_api_streams_pieces_that_grow_into_the_reply(served_app: str, chat_case: tuple[str,
                                                                                            str]):
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


def _raw_call(url: str, body: str) -> str:
    """Gradio's own HTTP API with a JSON body as typed (1e400 is valid JSON): the last data."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{url}gradio_api/call/chat", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/chat/{event}",
                                    timeout=60).read().decode()
    events = [line for line in stream.splitlines() if line.startswith(("event:", "data:"))]
    assert "event: error" not in events, stream
    return json.loads([e for e in events if e.startswith("data:")][-1][5:])[0]


def test_chat_api_takes_absurd_numbers_and_broken_text_in_its_stride(served_app: str):
    for tokens in ("1e400", "Infinity", "-Infinity", "NaN", "1e30"):
        reply = _raw_call(served_app, f'{{"data": ["{QUESTION}", 0.0, {tokens}]}}')
        assert isinstance(reply, str) and reply and not reply.startswith(NOTICE), (tokens, reply)
    broken = _raw_call(served_app, '{"data": ["hi \\ud800 there", 0.0, 8]}')
    assert broken.startswith(NOTICE) and "not valid text" in broken
    assert not Client(served_app, verbose=False).predict(QUESTION, 0.0, 4,
                                                         api_name="/chat").startswith(NOTICE)


def test_the_app_listens_on_its_port_only(tmp_path: Path, served_model: Path):
    """The gguf backend runs llama.cpp's server in-process: it must not open a TCP port of its
    own beside the app (it answered anyone with an uncapped /completion and the model path)."""
    import sys

    from tests.serving.conftest import free_port, start_app, stop_app
    from training.export.gguf import export_gguf

    model = tmp_path / "m"
    shutil.copytree(served_model, model)
    export_gguf(model, model / "gguf" / "m-f16.gguf", "f16")
    port = free_port()
    proc = start_app([sys.executable, "-m", "serving.app", "--model", str(model), "--backend",
                      "gguf", "--port", str(port)], port, tmp_path / "app.log")
    try:
        assert listening_tcp_ports(proc.pid) == [port]
    finally:
        stop_app(proc)


def listening_tcp_ports(pid: int) -> list[int]:
    """TCP ports a process listens on, from /proc (the sockets among its open files)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = f"/proc/{pid}/fd/{fd}"
        target = os.readlink(link) if os.path.exists(link) else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
