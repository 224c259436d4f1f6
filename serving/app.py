"""A Gradio chat app over one model folder and one runtime.

    python -m serving.app --model models/tiny-chat --backend torch|onnx|gguf \
        [--host 127.0.0.1] [--port 7860]

The chat endpoint is `/chat` (Gradio ChatInterface's default): gradio_client sends the message and
gets the reply text back. The chat logic and its caps live in serving/chat.py.
"""

# No `from __future__ import annotations`: gr.api reads the handler's type hints at runtime to
# describe the endpoint, and string annotations naming local imports would not resolve.
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from serving import api
from serving.api import api_key_from, serve
from serving.backend import BackendError
from serving.chat import ChatService, Limits
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

T = TypeVar("T")


def build_app(service: ChatService, model_label: str, concurrency: int = 4):
    """The Blocks app: header (backend, model), the chat, settings within caps, last-reply speed,
    and the `/chat` API (message, temperature, max_new_tokens → reply text)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines; no telemetry
    import gradio as gr

    limits = service.limits

    def respond(message: str, history: list, temperature: float, max_new_tokens: int):
        replies = service.reply_with_stats(message, history, temperature, max_new_tokens)
        for text, stats in clean_errors(replies):
            yield text, (stats.markdown() if stats else gr.skip())

    def chat(message: str, temperature: float = 0.0,
             max_new_tokens: int = limits.default_new_tokens) -> Iterator[str]:
        """Reply to one user message (streamed; the last value is the whole reply)."""
        yield from clean_errors(service.reply(message, [], temperature, max_new_tokens))

    with gr.Blocks(title="mlzero chat", analytics_enabled=False) as demo:
        gr.Markdown(f"## mlzero chat\nModel **{model_label}** on the **{service.backend.runtime}** "
                    f"backend (`{service.backend.name}`), context {service.context} tokens.")
        temperature = gr.Slider(0.0, limits.max_temperature, value=0.0, step=0.05,
                                label="Temperature (0 = greedy)", render=False)
        max_new = gr.Slider(1, limits.max_new_tokens, value=limits.default_new_tokens, step=1,
                            label="Max new tokens", render=False)
        stats = gr.Markdown("Last reply: none yet.", elem_id="reply-stats", render=False)
        gr.ChatInterface(
            respond,
            textbox=gr.Textbox(placeholder="Ask something, e.g. What is 12 + 34?",
                               max_length=limits.max_input_chars, submit_btn=True, stop_btn=True,
                               elem_id="chat-input"),
            # Shown literally: a small model's text is not Markdown, and "<" or "*" must not vanish.
            chatbot=gr.Chatbot(elem_id="chatbot", height=420, render_markdown=False),
            additional_inputs=[temperature, max_new],
            additional_inputs_accordion="Settings",
            additional_outputs=[stats],
            # The UI's own endpoint returns (reply, stats); clients use the plain `/chat` below.
            api_name="chat_ui", api_visibility="private",
            concurrency_limit=concurrency, fill_height=False,
        )
        stats.render()
        # Generation is serialised by the backend's lock; a few queue workers (for the UI and for
        # the API each) let the next request tokenise and the last one finish streaming meanwhile.
        gr.api(chat, api_name="chat", concurrency_limit=concurrency)
    demo.queue(default_concurrency_limit=concurrency, max_size=256)
    return demo


def clean_errors(replies: Iterator[T]) -> Iterator[T]:
    """The replies, with an unexpected failure shown as one plain sentence (Gradio would show
    the exception's own text to the client) and logged as one line for the operator."""
    import gradio as gr

    try:
        yield from replies
    except Exception as err:
        print(f"mlzero chat: generation failed: {type(err).__name__}: {first_line(err)}",
              file=sys.stderr, flush=True)
        raise gr.Error("The model could not reply to this message. Please try another.",
                       print_exception=False) from None


def parse_args(argv: list[str] | None):
    limits = Limits()
    p = ArgumentParser(prog="python -m serving.app", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/tiny-chat"), help="model folder")
    p.add_argument("--backend", choices=RUNTIMES, default="torch", help="runtime (default torch)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--concurrency", type=int, default=4, help="queue workers for the chat event")
    p.add_argument("--max-input-chars", type=int, default=limits.max_input_chars)
    p.add_argument("--max-new-tokens", type=int, default=limits.max_new_tokens,
                   help="cap on the max-new-tokens setting (and the API's max_tokens)")
    p.add_argument("--api-key", help=f"require this key: a bearer key on /v1, the sign-in "
                                     f"password of the page (or set {api.KEY_ENV})")
    add_runtime_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (1 <= args.port <= 65535):
        raise UsageError(f"--port {args.port} is not a TCP port; see: python -m serving.app --help")
    if args.concurrency < 1 or args.max_input_chars < 1 or args.max_new_tokens < 1:
        raise UsageError("--concurrency, --max-input-chars and --max-new-tokens must be positive; "
                         "see: python -m serving.app --help")
    require_model(args.model, made_by=made_by_hint(args.model))
    check_port_free(args.host, args.port,  # before minutes of model loading, not after
                    f"python -m serving.app --model {args.model} --backend {args.backend} "
                    f"--host {args.host} --port {args.port + 1}")
    _limit_threads(args.backend)
    try:
        backend = load_backend(args.model, args.backend, **runtime_options(args.backend, args))
    except BackendError as err:
        raise UsageError(str(err)) from None
    limits = Limits(max_input_chars=args.max_input_chars, max_new_tokens=args.max_new_tokens,
                    default_new_tokens=min(Limits().default_new_tokens, args.max_new_tokens))
    name = args.model.resolve().name
    demo = build_app(ChatService(backend, limits), name, args.concurrency)
    key = api_key_from(args.api_key)
    app = api.build(api.ChatCompletions(backend, name, api.ApiLimits(
        max_tokens=args.max_new_tokens,
        default_tokens=min(api.ApiLimits.default_tokens, args.max_new_tokens))), key)
    import gradio as gr

    # With a key, the page and Gradio's routes (they generate too) ask for it: the key is the
    # sign-in password, with any user name (gradio_client: auth=(name, key)).
    auth = None if key is None else (lambda _user, password: api.same_key(password, key))
    app = gr.mount_gradio_app(app, demo, path="/", ssr_mode=False, auth=auth,
                              auth_message="Sign in with the server's API key as the password "
                                           "(any user name).")
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    serve(app, args.host, args.port,
          f"mlzero chat: {backend.name} ({backend.where}) running at http://{shown}:{args.port} "
          f"(OpenAI API at /v1{', key required' if key else ''})")


def _limit_threads(runtime: str) -> None:
    """Honour MLZERO_THREADS for torch (onnx and gguf read their own settings)."""
    threads = os.environ.get("MLZERO_THREADS")
    if runtime == "torch" and threads and threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))


if __name__ == "__main__":
    cli_main(main)()
