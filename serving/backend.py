"""What a backend is: generate a chat reply from a model folder, whatever the runtime.

    backend = load_backend("models/tiny-chat", "torch")      # serving.runtimes
    for piece in backend.stream(messages, max_new_tokens=64):
        print(piece, end="")

The web app, the API and `training.evaluate` talk to this interface and never to a runtime
directly. One module per runtime implements it (torch_backend, onnx_backend, gguf_backend);
serving.runtimes picks one by name. Backends hold no UI code, so importing them stays light.

Prompts are token ids built by `encode_chat`: the model's own chat template, with every
message's text tokenized as plain text, so typed special-token text ("<|im_end|>") can never
become a control token and forge a turn. Every runtime is given exactly these ids.
"""

from __future__ import annotations

import queue
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from serving.helpers import first_line

Messages = list[dict[str, str]]
T = TypeVar("T")


class BackendError(Exception):
    """The model folder cannot be served by this runtime (missing export, bad files)."""


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy at temperature 0, else nucleus sampling from a seed."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Piece:
    """A piece of a reply. The last piece of every reply has a finish_reason: "stop" (the
    model ended its turn) or "length" (max_new_tokens reached), and the reply's token count."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


def sample_next(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else softmax at the temperature over the smallest set of tokens
    whose probability reaches top_p."""
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # a tiny temperature: -inf for all but the top, as greedy
        p = np.exp((z - z.max()) / sampling.temperature)  # shifted first: never inf/inf = NaN
    p /= p.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        n_keep = int(np.searchsorted(np.cumsum(p[order]), sampling.top_p)) + 1
        kept = np.zeros(len(p), bool)
        kept[order[:n_keep]] = True
        p = np.where(kept, p, 0.0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def left_pad(prompts: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of different lengths as one [batch, width] array, padded on the left (so every
    row's next token comes at the same position), and the attention mask (0 on padding)."""
    width = max(map(len, prompts))
    ids = np.array([[pad] * (width - len(p)) + list(p) for p in prompts], np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    return ids, mask


def in_thread(produce: Callable[[Callable[[T], bool]], None]) -> Iterator[T]:
    """Run `produce(emit)` in one dedicated thread and yield what it emits, here.

    The one bridge between a producer and a consumer in different threads. Generation runs
    in a thread of its own because Gradio and the API resume a streaming handler in whichever
    worker is free, while per-thread state (torch's inference mode) and llama.cpp's callback
    belong to the thread that started them. `emit` returns False once the consumer has gone
    (closed the iterator: a client left, the stop button): the producer should stop then.
    """
    items: queue.Queue = queue.Queue(maxsize=64)  # bounded: an abandoned reply stops soon
    stop = threading.Event()
    done = object()

    def emit(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            produce(emit)
        except BaseException as err:  # re-raised in the consumer's thread
            emit(_Failure(err))
        finally:
            emit(done)

    threading.Thread(target=run, daemon=True, name="mlzero-generate").start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, _Failure):
                raise item.err
            yield item
    finally:
        stop.set()


class _Failure:
    def __init__(self, err: BaseException):
        self.err = err


# ---------------------------------------------------------------------------- prompts


@dataclass
class ChatIds:
    """A rendered conversation: token ids, and where each message's content starts (a token
    index), so a caller can tell what dropping the oldest turns saves without re-encoding."""

    ids: list[int]
    content_starts: list[int] = field(default_factory=list)


class ChatEncoder:
    """Token ids of a conversation in a tokenizer's chat template, content as plain text.

    The template is rendered twice: once with a sentinel in place of each message's content,
    which shows where the template itself puts special tokens, and once for real. The text is
    cut at the template's special tokens only; everything between is tokenized with special
    tokens disabled. Ordinary conversations get exactly the ids `apply_chat_template` gives
    (tested on every tokenizer kind we export); typed special-token text stays plain text.
    """

    def __init__(self, tokenizer: Any):
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise BackendError("a fast tokenizer (tokenizer.json) is required")
        # Two private copies, never mutated after this: the app encodes from many threads, and
        # transformers' own split_special_tokens flips a flag on the shared tokenizer.
        self.plain = Tokenizer.from_str(backend.to_str())
        self.plain.encode_special_tokens = True
        self.with_specials = Tokenizer.from_str(backend.to_str())
        self.special_ids = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}

    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(self, messages: Messages, add_generation_prompt: bool = True) -> ChatIds:
        """Linear in the conversation's length (a long history is trimmed by encoding it)."""
        sentinels = [f"\u2063MLZ{i}\u2063" for i in range(len(messages))]
        skeleton = self.render([{**m, "content": s} for m, s in zip(messages, sentinels)],
                               add_generation_prompt)
        text = self.render(messages, add_generation_prompt)
        contents = [m["content"] for m in messages]
        marks = _positions(skeleton, sentinels)
        if _filled(skeleton, marks, sentinels, contents) != text:
            # e.g. a template that trims content: refuse rather than guess
            raise BackendError("the chat template changes message text; it cannot be encoded "
                               "with content kept apart from control tokens")
        # shifts[k]: how far real text lies from the skeleton after k contents replaced
        shifts = list(accumulate((len(c) - len(s) for c, s in zip(contents, sentinels)),
                                 initial=0))
        content_at = [at + shift for at, shift in zip(marks, shifts)]
        specials = self._template_specials(skeleton, marks, shifts)
        ids: list[int] = []
        starts: list[int] = []
        pos = 0
        for a, b, tid in specials + [(len(text), len(text), None)]:
            enc = self.plain.encode(text[pos:a], add_special_tokens=False)
            inside = content_at[len(starts):bisect_right(content_at, a)]
            if inside:  # the first token at or after each content's start
                offsets = [o[0] for o in enc.offsets]
                starts += [len(ids) + bisect_left(offsets, at - pos) for at in inside]
            ids.extend(enc.ids)
            if tid is not None:
                ids.append(tid)
            pos = b
        return ChatIds(ids, starts)

    def _template_specials(self, skeleton: str, marks: list[int],
                           shifts: list[int]) -> list[tuple[int, int, int]]:
        """(start, end, id) of each special token the template wrote, in real-text positions."""
        enc = self.with_specials.encode(skeleton, add_special_tokens=False)
        out = []
        for tid, (a, b) in zip(enc.ids, enc.offsets):
            if tid in self.special_ids:
                shift = shifts[bisect_left(marks, a)]  # contents placed before this token
                out.append((a + shift, b + shift, tid))
        return out


def _positions(skeleton: str, sentinels: list[str]) -> list[int]:
    """Where each sentinel is in the rendered skeleton, in order (each search starts where the
    last one ended: one pass over the text)."""
    marks, cursor = [], 0
    for s in sentinels:
        at = skeleton.find(s, cursor)
        if at < 0:  # the template dropped or changed this message; cannot place it
            raise BackendError("the chat template does not render every message's content")
        marks.append(at)
        cursor = at + len(s)
    return marks


def _filled(skeleton: str, marks: list[int], sentinels: list[str], contents: list[str]) -> str:
    """The skeleton with each sentinel replaced by its content, in one pass."""
    parts, cursor = [], 0
    for at, s, c in zip(marks, sentinels, contents):
        parts += [skeleton[cursor:at], c]
        cursor = at + len(s)
    return "".join(parts) + skeleton[cursor:]


# ---------------------------------------------------------------------------- backends


def context_window(tokenizer: Any) -> int:
    """How many tokens (prompt + reply) a model with this tokenizer takes."""
    n = getattr(tokenizer, "model_max_length", 0)
    return n if 0 < n < 1_000_000 else 512  # no limit given: a small safe window


class Backend:
    """Shared by every runtime: tokenizer and chat template, stop tokens, generation slots.

    Subclasses implement `_generate(prompt_ids, sampling, emit)`, which calls emit(Piece) for
    each piece of the reply (the last one with its finish_reason) and stops early when emit
    returns False. It runs in a thread of its own (`in_thread`), as many at once as `slots`
    allows: one, unless the runtime batches concurrent requests itself.
    """

    runtime = "?"
    where = "the CPU"  # where it computes, as the app and evaluation print it

    def __init__(self, model_dir: str | Path, tokenizer_dir: str | Path | None = None):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
        except Exception as err:  # transformers raises many types for a broken folder
            raise BackendError(f"cannot load the tokenizer of {model_dir}: "
                               f"{first_line(err)}") from None
        if self.tokenizer.chat_template is None:
            raise BackendError(f"{model_dir}: tokenizer has no chat template")
        self.chat = ChatEncoder(self.tokenizer)
        self.stop_ids = {
            i for i in (self.tokenizer.eos_token_id,
                        self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(i, int) and i >= 0 and i != self.tokenizer.unk_token_id
        }
        # generations at once on this model: one, unless the runtime batches requests itself
        self.slots = threading.BoundedSemaphore(1)

    @property
    def name(self) -> str:
        return f"{self.runtime}:{self.model_dir.name}"

    @property
    def context(self) -> int:
        """How many tokens (prompt + reply) the model takes."""
        return context_window(self.tokenizer)

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.chat.encode(messages).ids

    def pieces(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[Piece]:
        """The reply to a prompt as it is generated; the last piece has its finish_reason."""

        def produce(emit: Callable[[Piece], bool]) -> None:
            with self.slots:  # a runtime that batches requests has more than one
                self._generate(prompt_ids, sampling, emit)

        return in_thread(produce)

    def stream(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0,
               seed: int = 0, top_p: float = 1.0) -> Iterator[str]:
        """Yield the reply as text pieces, stopping at the end-of-turn token."""
        sampling = Sampling(max_new_tokens, temperature, top_p, seed)
        for piece in self.pieces(self.prompt_ids(messages), sampling):
            if piece.text:
                yield piece.text

    def generate(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> str:
        return "".join(self.stream(messages, max_new_tokens, temperature, seed))

    def generate_batch(self, conversations: list[Messages], max_new_tokens: int = 32) -> list[str]:
        """Greedy replies for many conversations (backends may batch them)."""
        return [self.generate(m, max_new_tokens) for m in conversations]

    def _generate(self, prompt_ids: list[int], sampling: Sampling,
                  emit: Callable[[Piece], bool]) -> None:
        raise NotImplementedError


class TokenBackend(Backend):
    """A runtime that gives token ids one at a time (torch, onnxruntime): the ids are turned
    into text here, with the same stop rule and UTF-8 handling for both."""

    def _token_ids(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[int]:
        raise NotImplementedError

    def _generate(self, prompt_ids, sampling, emit):
        ids: list[int] = []
        shown = ""
        finish = "length"
        for tok in self._token_ids(prompt_ids, sampling):
            if tok in self.stop_ids:
                finish = "stop"
                break
            ids.append(tok)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
                continue
            if not emit(Piece(text[len(shown):], completion_tokens=len(ids))):
                return
            shown = text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        emit(Piece(text[len(shown):], finish, len(ids)))

    def batch_prompt(self, conversations: list[Messages]) -> tuple[np.ndarray, np.ndarray]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return left_pad([self.prompt_ids(m) for m in conversations], pad)

    def decode_replies(self, rows: list[list[int]]) -> list[str]:
        """Generated ids per row, cut at the first stop token, as text."""
        out = []
        for row in rows:
            cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            out.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return out
