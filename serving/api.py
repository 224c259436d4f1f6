"""An OpenAI-compatible API over one model folder and one runtime: what the `openai` client,
LangChain, editors and Open WebUI speak.

    python -m serving.api --model models/tiny-chat --backend gguf [--port 8000] [--host 127.0.0.1]
        [--api-key KEY | MLZERO_API_KEY=KEY] [--parallel 4]

Routes: POST /v1/chat/completions (streamed as server-sent events or not), GET /v1/models (the
model, under its folder's name: what requests pass as `model`), GET /health. The chat app
(`python -m serving.app`) serves the same routes beside its page.

Settings: temperature, top_p, max_tokens (or max_completion_tokens), stop, seed,
stream_options.include_usage; messages with text content (a string or text parts). What a text
model cannot do (tools, functions, response_format other than text, logprobs, penalties,
logit_bias, image parts) is refused with 400 naming the field, never silently ignored. Errors
come in OpenAI's JSON shape: 400 invalid request, a missing model or a prompt over the context
(code context_length_exceeded), 401 a missing or wrong key, 404 an unknown model or route, 413
a body over the size cap, 503 when the queue is full.

With --backend gguf and --parallel N, llama.cpp runs N requests in one batch (its slots and
continuous batching); the other backends generate one reply at a time.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request  # at module level: FastAPI reads the route's annotations
from fastapi.responses import JSONResponse, StreamingResponse

from serving.backend import Backend, BackendError, Piece, Sampling
from serving.helpers import (
    ArgumentParser,
    UsageError,
    check_port_free,
    cli_main,
    first_line,
    made_by_hint,
    require_model,
)
from serving.runtimes import RUNTIMES, add_runtime_arguments, load_backend, runtime_options

KEY_ENV = "MLZERO_API_KEY"
ROLES = ("system", "user", "assistant", "developer")  # developer: OpenAI's newer name for system


@dataclass(frozen=True)
class ApiLimits:
    max_body_bytes: int = 1_000_000  # a chat, not an upload
    max_input_chars: int = 32_000  # all messages together
    max_messages: int = 256
    max_tokens: int = 512  # the most a request may ask for
    default_tokens: int = 256  # when it does not say
    max_stop: int = 4  # stop sequences (OpenAI allows 4)
    queue: int = 64  # requests running or waiting; more get 503


class ApiError(Exception):
    """A request the API refuses, with OpenAI's error fields."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param = code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    sampling: Sampling
    stream: bool
    include_usage: bool
    stop: list[str]


def parse_request(body: Any, model: str, limits: ApiLimits) -> ChatRequest:
    """A validated request, or an ApiError naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "you must provide a model parameter (GET /v1/models lists it)",
                       param="model")
    if body["model"] != model:
        raise ApiError(404, f"The model {body['model']!r} does not exist; this server has "
                            f"{model!r} (GET /v1/models)", "model_not_found", "model")
    refuse_unsupported(body)
    parsed = parse_messages(body.get("messages"), limits)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = limits.default_tokens if max_tokens is None else max_tokens
    if not _is_int(max_tokens) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"max_tokens must be an integer from 1 to {limits.max_tokens}",
                       param="max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ApiError(400, "top_p must be above 0", param="top_p")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(31)
    elif not _is_int(seed):
        raise ApiError(400, "seed must be an integer", param="seed")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > limits.max_stop or not all(
            isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"stop must be a string or a list of up to {limits.max_stop} "
                            "non-empty strings", param="stop")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise ApiError(400, "stream must be true or false, stream_options an object",
                       param="stream")
    return ChatRequest(parsed, Sampling(int(max_tokens), temperature, top_p, int(seed) % 2**31),
                       stream, bool(options.get("include_usage")), stop)


# OpenAI settings this server cannot honour, with the values that mean "not used" (accepted):
# a request that asks for more is refused rather than answered as if it had not asked.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],),
    "function_call": ("none", "auto"), "response_format": ({"type": "text"},),
    "logprobs": (False,), "top_logprobs": (0,), "presence_penalty": (0,),
    "frequency_penalty": (0,), "logit_bias": ({},),
}


def refuse_unsupported(body: dict[str, Any]) -> None:
    for key, unused in UNSUPPORTED.items():
        value = body.get(key)
        if value is not None and not any(_same(value, u) for u in unused):
            raise ApiError(400, f"{key} is not supported by this server (a small text model "
                                f"without tools, logprobs, penalties or output formats)",
                           "unsupported_parameter", key)


def _same(value: Any, unused: Any) -> bool:
    """JSON equality, where true is not 1 (as it is in Python)."""
    return value == unused and isinstance(value, bool) == isinstance(unused, bool)


def parse_messages(messages: Any, limits: ApiLimits) -> list[dict[str, str]]:
    """The messages as {"role", "content": text}, or an ApiError naming the one that is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"at most {limits.max_messages} messages", param="messages")
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}",
                           param=f"messages[{i}].role")
        text = content_text(m.get("content"), f"messages[{i}].content")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"messages[{i}].content is not valid text",
                           param=f"messages[{i}].content") from None
        parsed.append({"role": "system" if m["role"] == "developer" else m["role"],
                       "content": text})
    if parsed[-1]["role"] == "assistant":
        raise ApiError(400, "the last message must be from the user or the system",
                       param="messages")
    if sum(len(m["content"]) for m in parsed) > limits.max_input_chars:
        raise ApiError(400, f"the messages are over {limits.max_input_chars} characters",
                       "context_length_exceeded", "messages")
    return parsed


def content_text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": str} parts (OpenAI's
    shapes). Anything else, images included, is refused: this model reads text only."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" and isinstance(kind, str):
            raise ApiError(400, f"{where}[{j}] is a {kind[:40]!r} part; this model reads only "
                                "text parts", "unsupported_content", f"{where}[{j}]")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f'{where}[{j}] must be {{"type": "text", "text": "..."}}',
                           param=f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{key} must be a number from {low} to {high}", param=key)
    return float(value)


def until_stop(pieces: Iterator[Piece], stop: list[str]) -> Iterator[Piece]:
    """The reply's pieces, cut at the first stop sequence: text that might be the start of one
    is held back until it is known not to be. The last piece says why the reply ended.

    Linear in the stop's length per piece: the held text is at most the longest stop (less
    one character) plus the new piece, and each step is a few C string searches over it."""
    held = ""
    tokens = 0
    for piece in pieces:
        tokens = piece.completion_tokens or tokens
        held += piece.text
        cut = min((i for i in (held.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            yield Piece(held[:cut], "stop", tokens)
            return
        if piece.finish_reason is not None:
            yield Piece(held, piece.finish_reason, tokens)
            return
        keep = min((_may_start(held, s) for s in stop), default=len(held))
        if keep > 0:
            yield Piece(held[:keep], None, tokens)
            held = held[keep:]
    yield Piece(held, "stop", tokens)  # the runtime ended without saying why


def _may_start(held: str, stop: str) -> int:
    """Where in `held` (holding no whole `stop`) the stop might begin, once more text comes:
    the first of its first character among the last len(stop) - 1 characters, else the end.
    Holding back from there (a little more than strictly needed) costs one search."""
    at = held.find(stop[0], max(0, len(held) - len(stop) + 1))
    return len(held) if at < 0 else at


class ChatCompletions:
    """One loaded model behind the OpenAI routes: validation, the queue cap, responses."""

    def __init__(self, backend: Backend, model: str, limits: ApiLimits = ApiLimits()):
        self.backend, self.model, self.limits = backend, model, limits
        self.created = int(time.time())
        self._lock = threading.Lock()
        self.in_flight = 0

    def admit(self) -> None:
        with self._lock:
            if self.in_flight >= self.limits.queue:
                raise ApiError(503, "the server is busy; retry shortly", "queue_full",
                               kind="server_error")
            self.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model",
                                            "created": self.created, "owned_by": "mlzero"}]}

    def prepare(self, req: ChatRequest) -> list[int]:
        try:
            ids = self.backend.chat.encode(req.messages).ids
        except BackendError as err:
            raise ApiError(400, str(err), param="messages") from None
        room = self.backend.context - req.sampling.max_new_tokens
        if len(ids) > room:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; with max_tokens "
                                f"{req.sampling.max_new_tokens} the model's context of "
                                f"{self.backend.context} leaves room for {max(room, 0)}",
                           "context_length_exceeded", "messages")
        return ids

    def complete(self, req: ChatRequest, ids: list[int]) -> dict[str, Any]:
        text, finish, tokens = "", "stop", 0
        with closing(self.backend.pieces(ids, req.sampling)) as pieces:
            for piece in until_stop(pieces, req.stop):
                text += piece.text
                tokens = piece.completion_tokens or tokens
                finish = piece.finish_reason or finish
        return {"id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "system_fingerprint": self.backend.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": _usage(len(ids), tokens)}

    def stream(self, req: ChatRequest, ids: list[int]) -> Iterator[str]:
        """Server-sent events: the role first, then content pieces, one chunk with the finish
        reason, usage when asked for, then [DONE]. Every chunk has the same id."""
        cid, created = _completion_id(), int(time.time())

        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": self.model, "system_fingerprint": self.backend.name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}], **extra}
            if req.include_usage:
                body.setdefault("usage", None)
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        tokens = 0
        # closed explicitly, at once, when the client leaves (see ClosingStream)
        with closing(self.backend.pieces(ids, req.sampling)) as pieces:
            for piece in until_stop(pieces, req.stop):
                tokens = piece.completion_tokens or tokens
                if piece.text:
                    yield chunk({"content": piece.text})
                if piece.finish_reason is not None:
                    yield chunk({}, piece.finish_reason)
        if req.include_usage:
            usage = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": self.model, "system_fingerprint": self.backend.name,
                     "choices": [], "usage": _usage(len(ids), tokens)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def add_routes(app, service: ChatCompletions, api_key: str | None = None) -> None:
    """Add the OpenAI routes to a FastAPI app (the API alone, or the chat app's server)."""

    def fail(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return same_key(given[7:] if given[:7].lower() == "bearer " else "", api_key)

    def unauthorized() -> JSONResponse:
        return fail(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)",
                             "invalid_api_key"))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models(request: Request):
        return service.models() if authorized(request) else unauthorized()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not authorized(request):
            return unauthorized()
        try:
            raw = await _read_capped(request, service.limits.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "the request body is not valid JSON") from None
            except RecursionError:  # e.g. 100k "[": a chat is never nested that deep
                raise ApiError(400, "the request body is nested too deeply") from None
            req = parse_request(body, service.model, service.limits)
            ids = service.prepare(req)
            service.admit()
        except ApiError as err:
            return fail(err)
        if not req.stream:
            from starlette.concurrency import run_in_threadpool

            try:
                return await run_in_threadpool(service.complete, req, ids)
            finally:
                service.release()

        def events() -> Iterator[str]:
            try:
                yield from service.stream(req, ids)
            except Exception as err:  # the status is sent already: end with an error event
                print(f"mlzero API: generation failed: {type(err).__name__}: {first_line(err)}",
                      file=sys.stderr, flush=True)
                failed = ApiError(500, "generation failed", kind="server_error")
                yield f"data: {json.dumps(failed.body())}\n\n"
            finally:
                service.release()

        return ClosingStream(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


class ClosingStream(StreamingResponse):
    """A streamed response that closes its generator as soon as the response ends, however
    it ends. When a client leaves, Starlette stops iterating a sync generator but never
    closes it: it lingered until garbage collection (minutes), and with it the generation
    thread, blocked on its full queue while holding the model's slot (issue 23)."""

    def __init__(self, source: Generator[str, None, None], **kwargs: Any):
        super().__init__(source, **kwargs)
        self.source = source

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Not running now: Starlette's worker-thread step is not abandoned on cancel, so
            # it has returned. Closing runs the generator's finally blocks: the slot and the
            # queue place are released and the generation thread told to stop.
            self.source.close()


async def _read_capped(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes", "request_too_large")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", "request_too_large")
    return body


def same_key(given: str, key: str) -> bool:
    """Whether a client gave the key; compared in constant time."""
    return hmac.compare_digest(given.encode(), key.encode())


def api_key_from(flag: str | None) -> str | None:
    """The key from --api-key or the environment (so it need not appear in `ps`)."""
    key = flag or os.environ.get(KEY_ENV) or None
    if key is not None and len(key) < 8:
        raise UsageError(f"the API key is shorter than 8 characters; choose a longer one "
                         f"(--api-key or {KEY_ENV})")
    return key


def build(service: ChatCompletions, api_key: str | None):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app = FastAPI(title="mlzero", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        kind = "not_found" if exc.status_code == 404 else None
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind).body(),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        return JSONResponse(ApiError(400, "invalid request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def crashed(_request, exc: Exception):  # never a traceback to the client
        # one line for the operator: what failed, never the request (it may hold secrets)
        print(f"mlzero API: internal error: {type(exc).__name__}: {first_line(exc)}",
              file=sys.stderr, flush=True)
        return JSONResponse(ApiError(500, "internal error", kind="server_error").body(),
                            status_code=500)

    add_routes(app, service, api_key)
    app.add_middleware(SameOriginOnly)
    return app


class SameOriginOnly:
    """Refuse a browser's cross-site request that can make the server work (any method but
    GET, HEAD, OPTIONS). A page on another site could otherwise run generations here with a
    simple `text/plain` POST (the browser only hides the answer from it), on a keyless server
    or with the chat page's sign-in cookie. Programs send no Origin and pass; so does the
    page's own (Origin matches Host, or X-Forwarded-Host behind a proxy, which no cross-site
    page can set without the preflight we never answer). A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would wrap streamed responses."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            origin = headers.get("origin")
            hosts = {headers.get("host"), headers.get("x-forwarded-host")} - {None}
            if origin is not None and urlsplit(origin).netloc.lower() not in {
                    h.lower() for h in hosts}:
                refused = ApiError(403, "cross-origin requests are refused", "cross_origin")
                await JSONResponse(refused.body(), status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(app, host: str, port: int, announce: str) -> None:
    """Run `app` with uvicorn and print `announce` once it accepts connections."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        raise UsageError(f"cannot serve on {host}:{port}; see: python -m serving.api --help")
    print(announce, flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(10)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m serving.api", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--backend", choices=RUNTIMES, default="torch", help="runtime (default torch)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help=f"require this bearer key (or set {KEY_ENV})")
    p.add_argument("--parallel", type=int, default=1,
                   help="gguf: requests decoded together in one batch (llama.cpp's slots)")
    p.add_argument("--max-tokens", type=int, default=ApiLimits.max_tokens,
                   help="the most new tokens a request may ask for")
    add_runtime_arguments(p)
    args = p.parse_args(argv)
    if not (1 <= args.port <= 65535) or args.parallel < 1 or args.max_tokens < 1:
        raise UsageError("--port must be a TCP port, --parallel and --max-tokens positive")
    key = api_key_from(args.api_key)
    require_model(args.model, made_by_hint(args.model))
    check_port_free(args.host, args.port, f"python -m serving.api --model {args.model} "
                                          f"--backend {args.backend} --port {args.port + 1}")
    options = runtime_options(args.backend, args)
    if args.backend == "gguf":
        options["parallel"] = args.parallel
    try:
        backend = load_backend(args.model, args.backend, **options)
    except BackendError as err:
        raise UsageError(str(err)) from None
    name = args.model.resolve().name
    limits = ApiLimits(max_tokens=args.max_tokens,
                       default_tokens=min(ApiLimits.default_tokens, args.max_tokens))
    app = build(ChatCompletions(backend, name, limits), key)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    serve(app, args.host, args.port, f"mlzero API: model {name!r} on {backend.name} "
                                     f"({backend.where}) running at http://{shown}:{args.port}/v1"
                                     + (" (API key required)" if key else ""))


if __name__ == "__main__":
    cli_main(main)()
