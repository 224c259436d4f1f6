"""Chat logic behind the web app, free of any UI import so it is easy to test.

`ChatService` turns a Gradio-style history plus a new message into the model's messages, enforces
the caps (input length, new tokens, temperature, context window), streams the reply from one
shared backend and measures the speed of each reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from serving.backend import Backend, ChatIds, Messages, Sampling

# A reply that starts with this is the app talking, not the model: it never goes back into a prompt.
NOTICE = "⚠ "


@dataclass(frozen=True)
class Limits:
    max_input_chars: int = 2000  # a chat turn, not a document; also bounds tokenizer work
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
                f"(**{self.tokens_per_s:.1f} tokens/s**, first token after "
                f"{self.first_token_s * 1000:.0f} ms)")


def text_of(content: Any, depth: int = 0) -> str:
    """The text of a Gradio message content: a string, a {"type": "text"} part, or a list of parts.
    Files and components have no text a text-only model could read, so they count as empty;
    so does anything else a client can send (numbers, a text that is not a string, lists
    nested deeper than Gradio ever nests them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text", "") if content.get("type", "text") == "text" else ""
        return text if isinstance(text, str) else ""
    if isinstance(content, (list, tuple)) and depth < 4:
        return "".join(text_of(c, depth + 1) for c in content)
    return ""


def history_to_messages(history: list[dict[str, Any]], message: str) -> Messages:
    """Gradio's openai-style history plus the new user message, as chat-template messages.

    App notices (and the user turn that caused them) are dropped: the model never said them.
    """
    turns: list[tuple[str, list[str]]] = []  # (role, its texts): joined once, at the end
    for turn in history:
        role, text = turn.get("role"), text_of(turn.get("content"))
        if role == "assistant" and text.startswith(NOTICE):
            if turns and turns[-1][0] == "user":
                turns.pop()
            continue
        if role not in ("user", "assistant", "system") or not text:
            continue
        if turns and turns[-1][0] == role:  # e.g. a user turn whose reply failed
            turns[-1][1].append(text)
        else:
            turns.append((role, [text]))
    if turns and turns[-1][0] == "user":  # its reply was a notice or is missing
        turns.pop()
    messages: Messages = [{"role": role, "content": "\n".join(texts)} for role, texts in turns]
    messages.append({"role": "user", "content": message})
    return messages


def fit_context(messages: Messages, encode: Callable[[Messages], ChatIds],
                budget: int) -> tuple[Messages, ChatIds] | None:
    """Drop the oldest turns until the prompt is at most `budget` tokens; a leading system
    message is kept, and a prompt starts at a user turn. Returns the kept messages and their
    encoding, or None if even the last user turn alone is too long.

    `encode(messages)` gives the prompt's ids and where each message's content starts. One
    encoding tells how many tokens dropping any number of leading turns saves (the span up to
    the next kept user turn's content), so a long history costs two encodings, not one per
    dropped turn; the choice is then checked with an exact encoding.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    while turns:
        chat = encode(system + turns)
        if len(chat.ids) <= budget:
            return system + turns, chat
        starts = chat.content_starts[len(system):]
        users = [j for j in range(1, len(turns)) if turns[j]["role"] == "user"]
        if not users:
            return None
        # dropping turns[:j] saves the tokens from turn 0's content to turn j's
        cut = next((j for j in users if len(chat.ids) - (starts[j] - starts[0]) <= budget),
                   users[-1])
        turns = turns[cut:]
    return None


def clamp(temperature: Any, max_new_tokens: Any, limits: Limits) -> tuple[float, int]:
    """Settings from the UI or the API, forced into the caps (a client can send anything:
    strings, NaN, 1e400)."""
    t = _number(temperature, 0.0)
    n = _number(max_new_tokens, limits.default_new_tokens)
    n = limits.max_new_tokens if n == float("inf") else int(max(n, 1.0))
    return min(max(t, 0.0), limits.max_temperature), min(n, limits.max_new_tokens)


def _number(value: Any, default: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return x if x == x else default  # NaN


def check_message(message: Any, limits: Limits) -> str | None:
    """A notice for input the app refuses, or None when the message is fine."""
    text = text_of(message)
    if not text.strip():
        return NOTICE + "Please type a message."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): not text any tokenizer takes
        return NOTICE + "Your message contains characters that are not valid text."
    if len(text) > limits.max_input_chars:
        return (NOTICE + f"Your message has {len(text)} characters; the limit is "
                f"{limits.max_input_chars}. Please shorten it.")
    return None


class ChatService:
    """One backend shared by every request; the backend's lock runs one generation at a time."""

    def __init__(self, backend: Backend, limits: Limits = Limits(), context: int | None = None):
        self.backend = backend
        self.limits = limits
        self.context = context or backend.context

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
        fitted = fit_context(history_to_messages(history or [], text_of(message)),
                             self.backend.chat.encode, self.context - max_new)
        if fitted is None:
            yield NOTICE + (f"Your message does not fit the model's {self.context}-token context "
                            f"with {max_new} new tokens. Please shorten it or lower max new "
                            "tokens."), None
            return
        start = time.perf_counter()
        first = None
        text = ""
        tokens = 0
        sampling = Sampling(max_new, temperature, seed=seed)
        for piece in self.backend.pieces(fitted[1].ids, sampling):
            tokens = piece.completion_tokens or tokens
            if not piece.text:
                continue
            if first is None:
                first = time.perf_counter() - start
            text += piece.text
            yield text, None
        seconds = time.perf_counter() - start
        stats = ReplyStats(tokens, seconds, first if first is not None else seconds)
        yield (text or NOTICE + "The model returned an empty reply."), stats
