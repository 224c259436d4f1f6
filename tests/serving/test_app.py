"""The app as users run it: a real server process, the /chat API through gradio_client, CLI
errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gradio_client import Client

from serving.chat import NOTICE
from serving.screenshot import chat_in_browser
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


# ---------------------------------------------------------------------------- issue 23: 4

KEY = "app-key-0123456789"


def _post(url: str, body: bytes, headers: dict) -> int:
    """The status of a POST, as a cross-site form or fetch would send it."""
    import httpx

    return httpx.post(url, content=body, headers=headers, timeout=60).status_code


def test_a_page_on_another_site_cannot_make_the_app_generate(served_app: str, served_model):
    """A keyless app ran a generation for a cross-site text/plain POST (the browser only hides
    the answer from the page that sent it)."""
    chat = b'{"data": ["What is 1 + 1?", 0.0, 2]}'
    openai_body = json.dumps({"model": served_model.name, "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]}).encode()
    host = served_app.rstrip("/")
    for route, body in ((f"{served_app}gradio_api/call/chat", chat),
                        (f"{served_app}v1/chat/completions", openai_body)):
        for origin in ("http://evil.example", "null"):
            assert _post(route, body, {"Content-Type": "text/plain", "Origin": origin}) == 403
        # the page itself (same origin) and programs (no Origin) still get answers
        assert _post(route, body, {"Content-Type": "application/json", "Origin": host}) == 200
        assert _post(route, body, {"Content-Type": "application/json"}) == 200


def test_an_app_key_guards_the_chat_routes_too(tmp_path: Path, served_model: Path):
    import sys

    import httpx
    import pytest

    from tests.serving.conftest import free_port, start_app, stop_app

    port = free_port()
    log = tmp_path / "app.log"
    proc = start_app([sys.executable, "-m", "serving.app", "--model", str(served_model),
                      "--port", str(port), "--api-key", KEY], port, log)
    url = f"http://127.0.0.1:{port}/"
    try:
        for route, body in (("gradio_api/call/chat", {"data": [QUESTION, 0.0, 2]}),
                            ("gradio_api/run/chat", {"data": [QUESTION, 0.0, 2]}),
                            ("gradio_api/queue/join", {"data": [QUESTION, 0.0, 2],
                                                       "fn_index": 0, "session_hash": "x"})):
            r = httpx.post(url + route, json=body, timeout=60)
            assert r.status_code in (401, 403), (route, r.status_code, r.text[:200])
        with pytest.raises(ValueError, match="login"):
            Client(url, verbose=False, auth=("me", "wrong-key-000000"))
        # the key is the page's password (any user name); a signed-in client chats
        client = Client(url, verbose=False, auth=("me", KEY))
        assert not client.predict(QUESTION, 0.0, 4, api_name="/chat").startswith(NOTICE)
        page = httpx.get(url, timeout=60).text  # the page's config asks a browser to sign in
        assert '"auth_required": true' in page.replace('":true', '": true')
        # and a browser that signs in with the key chats as before
        reply, _ = chat_in_browser(url, QUESTION, tmp_path / "shot.png", MAX_NEW_TOKENS, key=KEY)
        assert reply.strip()
    finally:
        stop_app(proc)
    assert KEY not in log.read_text()


# ---------------------------------------------------------------------------- issue 23: 7

def test_odd_input_gets_a_clean_answer_not_an_exception(served_app: str):
    """Gradio showed the raw exception text (TypeError, RecursionError, "Probabilities contain
    NaN") for what the API now refuses with 400."""
    for data in ('[[1, null, ["a"], {"text": 5}], 0.0, 4]',
                 "[" + "[" * 900 + "]" * 900 + ", 0.0, 4]",
                 f'["{QUESTION}", 1e-308, 4]'):
        reply = _raw_call(served_app, '{"data": ' + data + "}")  # no error event
        assert isinstance(reply, str) and reply, data
