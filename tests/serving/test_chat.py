"""Chat logic without a server: caps, refusals, history → messages, context fitting, stats."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from serving.backend import Backend, ChatIds, Piece
from serving.chat import (
    NOTICE,
    ChatService,
    Limits,
    check_message,
    clamp,
    fit_context,
    history_to_messages,
)


class FakeChat:
    """Words as tokens: each message's words, then a generation marker."""

    def __init__(self):
        self.encoded = []

    def encode(self, messages, add_generation_prompt=True):
        self.encoded.append(messages)
        ids, starts = [], []
        for m in messages:
            starts.append(len(ids))
            ids += m["content"].split()
        return ChatIds(ids + ["<gen>"], starts)


class FakeBackend(Backend):
    """The real Backend contract (thread bridge, slots) over a runtime that streams a fixed
    reply word by word; it records what it was asked and the threads it ran in."""

    runtime = "fake"

    def __init__(self, reply="forty six"):
        self.model_dir = Path("fake-model")
        self.chat = FakeChat()
        self.slots = threading.BoundedSemaphore(1)
        self.reply = reply
        self.calls = []
        self.threads = []

    @property
    def context(self):
        return 40

    def _generate(self, prompt_ids, sampling, emit):
        self.calls.append((prompt_ids, sampling.max_new_tokens, sampling.temperature))
        words = self.words()[: sampling.max_new_tokens]
        for i, w in enumerate(words):
            self.threads.append(threading.get_ident())
            if not emit(Piece(w if i == 0 else " " + w, completion_tokens=i + 1)):
                return
        emit(Piece("", "stop", len(words)))

    def words(self):
        return self.reply.split()


def test_check_message_refuses_empty_and_huge():
    limits = Limits(max_input_chars=10)
    assert check_message("", limits).startswith(NOTICE)
    assert check_message("  \n ", limits).startswith(NOTICE)
    assert "limit is 10" in check_message("x" * 11, limits)
    assert check_message("x" * 10, limits) is None
    assert check_message({"text": "hi", "files": []}, limits) is None


def test_clamp_forces_settings_into_caps():
    limits = Limits(max_new_tokens=100, max_temperature=2.0, default_new_tokens=64)
    assert clamp(5, 10_000, limits) == (2.0, 100)
    assert clamp(-1, 0, limits) == (0.0, 1)
    assert clamp("0.5", "7", limits) == (0.5, 7)
    assert clamp(None, None, limits) == (0.0, 64)
    t, _ = clamp(math.nan, 3, limits)
    assert t == 0.0


def test_history_to_messages_keeps_the_conversation():
    history = [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": [{"type": "text", "text": "2"}]},
    ]
    assert history_to_messages(history, "And 2+2?") == [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2+2?"},
    ]


def test_history_to_messages_drops_notices_and_their_cause():
    history = [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": NOTICE + "Please type a message."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "x" * 5000},
        {"role": "assistant", "content": NOTICE + "too long"},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/a.png"}}]},
    ]
    assert history_to_messages(history, "again") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


def test_fit_context_drops_oldest_turns_whole():
    msgs = [{"role": "system", "content": "sys"},
            {"role": "user", "content": "a a a a"}, {"role": "assistant", "content": "b b b b"},
            {"role": "user", "content": "c c"}]
    chat = FakeChat()
    assert fit_context(msgs, chat.encode, 100)[0] == msgs
    # 12 tokens do not fit in 5: the first exchange goes, the system message stays
    kept, ids = fit_context(msgs, chat.encode, 5)
    assert kept == [msgs[0], msgs[3]] and ids.ids == ["sys", "c", "c", "<gen>"]
    assert fit_context(msgs, chat.encode, 2) is None


def test_fit_context_encodes_a_long_history_a_constant_number_of_times():
    # one encoding says what dropping any number of turns saves; quadratic re-encoding took
    # 9 s for 800 turns
    turns = []
    for i in range(800):
        turns += [{"role": "user", "content": f"q{i} x"}, {"role": "assistant", "content": "a"}]
    chat = FakeChat()
    kept, ids = fit_context(turns + [{"role": "user", "content": "last one"}], chat.encode, 10)
    assert len(ids.ids) <= 10 and kept[-1]["content"] == "last one"
    assert len(chat.encoded) <= 3


def test_reply_streams_growing_text_with_clamped_settings():
    backend = FakeBackend("forty six is the answer")
    service = ChatService(backend, Limits(max_new_tokens=3))
    outs = list(service.reply("What is 12 + 34?", [], temperature=9, max_new_tokens=50))
    assert outs == ["forty", "forty six", "forty six is"]
    prompt, max_new, temperature = backend.calls[0]
    assert prompt == ["What", "is", "12", "+", "34?", "<gen>"]
    assert (max_new, temperature) == (3, Limits().max_temperature)


def test_reply_with_stats_ends_with_the_whole_text_and_its_speed():
    outs = list(ChatService(FakeBackend("forty six")).reply_with_stats("hi", [], max_new_tokens=8))
    assert [t for t, _ in outs] == ["forty", "forty six", "forty six"]
    assert [s is None for _, s in outs] == [True, True, False]
    stats = outs[-1][1]
    assert stats.tokens == 2 and stats.seconds >= stats.first_token_s >= 0
    assert "2 tokens" in stats.markdown() and "tokens/s" in stats.markdown()


@pytest.mark.parametrize("message", ["", "   ", "y" * 3000])
def test_reply_refuses_bad_input_without_calling_the_model(message):
    backend = FakeBackend()
    outs = list(ChatService(backend).reply(message, []))
    assert len(outs) == 1 and outs[0].startswith(NOTICE)
    assert backend.calls == []


def test_reply_refuses_a_message_longer_than_the_context():
    backend = FakeBackend()
    service = ChatService(backend)  # context 40 words, 8 new tokens → 32 for the prompt
    outs = list(service.reply("w " * 60, [], max_new_tokens=8))
    assert outs[0].startswith(NOTICE) and "context" in outs[0]
    assert backend.calls == []


def test_reply_trims_old_history_to_the_context():
    backend = FakeBackend()
    history = [{"role": "user", "content": "old " * 20}, {"role": "assistant", "content": "ok"},
               {"role": "user", "content": "recent"}, {"role": "assistant", "content": "sure"}]
    list(ChatService(backend).reply("now", history, max_new_tokens=16))
    assert backend.calls[0][0] == ["recent", "sure", "now", "<gen>"]


def test_empty_model_reply_becomes_a_notice():
    outs = list(ChatService(FakeBackend("")).reply("hi", []))
    assert outs[-1].startswith(NOTICE)


def test_generation_stays_in_one_thread_when_resumed_from_many():
    # Gradio resumes streaming handlers from a pool of threads; torch's inference mode (and other
    # per-thread state) only holds if every step of the model runs in the same thread.
    backend = FakeBackend("one two three four five six")
    gen = ChatService(backend).reply("hi", [], max_new_tokens=8)
    outs = []
    for _ in range(6):  # each step from a new thread
        t = threading.Thread(target=lambda: outs.append(next(gen)))
        t.start()
        t.join()
    assert outs[-1] == "one two three four five six"
    assert len(set(backend.threads)) == 1


def test_backend_errors_reach_the_caller():
    class Broken(FakeBackend):
        def words(self):
            raise RuntimeError("runtime crashed")

    with pytest.raises(RuntimeError, match="runtime crashed"):
        list(ChatService(Broken()).reply("hi", [], max_new_tokens=4))


def test_closing_the_reply_early_stops_generation_and_frees_the_model():
    class Endless(FakeBackend):
        def words(self):
            return [f"w{i}" for i in range(100_000)]

    backend = Endless()
    gen = ChatService(backend, Limits(max_new_tokens=100_000)).reply("hi", [],
                                                                     max_new_tokens=100_000)
    next(gen)
    gen.close()
    time.sleep(0.5)
    assert len(backend.threads) < 1000
    assert backend.slots.acquire(blocking=False)  # the model is free again


def test_consecutive_turns_of_one_role_merge_in_order():
    """Runs of one role join with newlines (joined once: a long run costs linear time); a
    notice drops the user turns that caused it."""
    from serving.chat import NOTICE

    history = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
               {"role": "assistant", "content": NOTICE + " too long"},
               {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
               {"role": "assistant", "content": "e"}, {"role": "user", "content": "f"}]
    assert history_to_messages(history, "g") == [
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d\ne"},
        {"role": "user", "content": "g"}]
    many = [{"role": "user", "content": "x"}] * 20_000 + [{"role": "assistant", "content": "y"}]
    merged = history_to_messages(many, "z")
    assert merged[0]["content"] == "\n".join(["x"] * 20_000) and len(merged) == 3
