"""Chat logic behind the web app, free of any UI import so it is easy to test.

`ChatService` turns a Gradio-style history plus a new message into the model's messages, enforces
the caps (input length, new tokens, temperature, context window), streams the reply from one
shared backend and measures the speed of each reply.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from serving.backends import Backend, Messages

# A reply that starts with this is the app talking, not the model: it never goes back into a prompt.
NOTICE = "⚠ "


@dataclass(frozen=True)
class Limits:
    max_input_chars: int = 2000  # a chat turn, not a document; also bounds tokenizer work per request
    max_new_tokens: int = 256
    default_new_tokens: int = 64
    max_temperature: float = 2.0


@dataclass
class ReplyStats:
    tokens: int
    seconds: float
    first_token_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def markdown(self) -> str:
        return (f"Last reply: {self.tokens} tokens in {self.seconds:.2f} s "
                f"(**{self.tokens_per_s:.1f} tokens/s**, first token after {self.first_token_s * 1000:.0f} ms)")


def text_of(content: Any) -> str:
    """The text of a Gradio message content: a string, a {"type": "text"} part, or a list of parts.
    Files and components have no text a text-only model could read, so they count as empty."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(text_of(c) for c in content)
    return ""


def history_to_messages(history: list[dict[str, Any]], message: str) -> Messages:
    """Gradio's openai-style history plus the new user message, as chat-template messages.

    App notices (and the user turn that caused them) are dropped: the model never said them.
    """
    messages: Messages = []
    for turn in history:
        role, text = turn.get("role"), text_of(turn.get("content"))
        if role == "assistant" and text.startswith(NOTICE):
            if messages and messages[-1]["role"] == "user":
                messages.pop()
            continue
        if role not in ("user", "assistant", "system") or not text:
            continue
        if messages and messages[-1]["role"] == role:  # e.g. a user turn whose reply failed
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n" + text}
        else:
            messages.append({"role": role, "content": text})
    if messages and messages[-1]["role"] == "user":  # its reply was a notice or is missing
        messages.pop()
    messages.append({"role": "user", "content": message})
    return messages


def fit_context(messages: Messages, n_tokens, budget: int) -> Messages | None:
    """Drop the oldest turns until the prompt is at most `budget` tokens (`n_tokens(messages)`
    counts them); a leading system message is kept. None if even the last message alone is too long."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    while turns:
        if n_tokens(system + turns) <= budget:
            return system + turns
        turns = turns[1:]
        while turns and turns[0]["role"] != "user":  # a prompt starts at a user turn
            turns = turns[1:]
    return None


def clamp(temperature: Any, max_new_tokens: Any, limits: Limits) -> tuple[float, int]:
    """Settings from the UI or the API, forced into the caps (a client can send anything)."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = 0.0
    try:
        n = int(max_new_tokens)
    except (TypeError, ValueError):
        n = limits.default_new_tokens
    t = t if t == t else 0.0  # NaN
    return min(max(t, 0.0), limits.max_temperature), min(max(n, 1), limits.max_new_tokens)


def check_message(message: Any, limits: Limits) -> str | None:
    """A notice for input the app refuses, or None when the message is fine."""
    text = text_of(message)
    if not text.strip():
        return NOTICE + "Please type a message."
    if len(text) > limits.max_input_chars:
        return (NOTICE + f"Your message has {len(text)} characters; the limit is "
                f"{limits.max_input_chars}. Please shorten it.")
    return None


class _Failure:
    def __init__(self, err: BaseException):
        self.err = err


def in_one_thread(make: Callable[[], Iterator[str]]) -> Iterator[str]:
    """Run the generator `make()` in one dedicated thread and yield its items here.

    Gradio resumes a streaming handler in whichever worker thread is free, but per-thread state
    such as torch's inference mode only holds in the thread that set it (on another thread the
    torch backend's logits require grad and `.numpy()` fails). Closing this iterator early (a
    client leaves, the stop button) stops the producer at its next item, releasing the model.
    """
    items: queue.Queue = queue.Queue(maxsize=64)  # bounded: an abandoned stream stops soon
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        gen = make()
        try:
            for item in gen:
                if not put(item):
                    break
        except BaseException as err:  # re-raised in the consumer's thread
            put(_Failure(err))
        finally:
            gen.close()
            put(done)

    threading.Thread(target=produce, daemon=True, name="mlzero-generate").start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, _Failure):
                raise item.err
            yield item
    finally:
        stop.set()


class ChatService:
    """One backend shared by every request; the backend's lock runs one generation at a time."""

    def __init__(self, backend: Backend, limits: Limits = Limits(), context: int | None = None):
        self.backend = backend
        self.limits = limits
        ctx = context or getattr(backend.tokenizer, "model_max_length", 0)
        # Tokenizers without a limit report a huge sentinel; fall back to a small safe window.
        self.context = ctx if 0 < ctx < 1_000_000 else 512

    def reply(self, message: Any, history: list[dict[str, Any]] | None = None,
              temperature: Any = 0.0, max_new_tokens: Any = None, seed: int = 0) -> Iterator[str]:
        """Yield the reply so far (the whole text each time, as Gradio's streaming expects)."""
        last = None
        for text, _ in self.reply_with_stats(message, history, temperature, max_new_tokens, seed):
            if text != last:  # the final (text, stats) pair repeats the text
                yield text
            last = text

    def reply_with_stats(self, message: Any, history: list[dict[str, Any]] | None = None,
                         temperature: Any = 0.0, max_new_tokens: Any = None, seed: int = 0,
                         ) -> Iterator[tuple[str, ReplyStats | None]]:
        """Like `reply`, as (text so far, None) pairs, then once more (whole text, its stats)
        when the model finished; refusals come as one (notice, None)."""
        notice = check_message(message, self.limits)
        if notice:
            yield notice, None
            return
        if max_new_tokens is None:
            max_new_tokens = self.limits.default_new_tokens
        temperature, max_new = clamp(temperature, max_new_tokens, self.limits)
        messages = fit_context(history_to_messages(history or [], text_of(message)),
                               lambda m: len(self.backend.prompt_ids(m)), self.context - max_new)
        if messages is None:
            yield NOTICE + (f"Your message does not fit the model's {self.context}-token context "
                            f"with {max_new} new tokens. Please shorten it or lower max new tokens."), None
            return
        start = time.perf_counter()
        first = None
        text = ""
        for piece in in_one_thread(lambda: self.backend.stream(messages, max_new, temperature, seed)):
            if first is None:
                first = time.perf_counter() - start
            text += piece
            yield text, None
        seconds = time.perf_counter() - start
        tokens = len(self.backend.tokenizer.encode(text, add_special_tokens=False)) if text else 0
        stats = ReplyStats(tokens, seconds, first if first is not None else seconds)
        yield (text or NOTICE + "The model returned an empty reply."), stats
