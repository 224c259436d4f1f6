"""The project's arithmetic chat conversations, made here (scratch/ imports nothing of training/).

"What is A + B?" and "What is A - B?" for A, B in 0-99, split into a training part and a held-out
part exactly as training/tasks.py splits them: the same seed string, the same standard-library
shuffle, so the held-out questions are the ones every other model of the project is scored on
(a test checks that both lists are equal).
"""

from __future__ import annotations

import random

import numpy as np

from scratch.nn.tokenizer import render_chat

SPLIT_SEED = 20240601  # training/tasks.py's: the held-out questions are the same for every run
HELD_OUT_FRACTION = 0.1
TASKS = {"+": "addition", "-": "subtraction"}

Example = tuple[str, str]  # (question, answer)


def arithmetic_examples(op: str) -> tuple[list[Example], list[Example]]:
    """All 'What is A op B?' for A, B in 0-99, as (train, held_out) lists of (question, answer)."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(f"{SPLIT_SEED}-{TASKS[op]}").shuffle(pairs)
    n_held = max(1, round(len(pairs) * HELD_OUT_FRACTION))

    def make(a: int, b: int) -> Example:
        return f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)

    return [make(*p) for p in pairs[n_held:]], [make(*p) for p in pairs[:n_held]]


def split() -> tuple[list[Example], list[Example]]:
    """Addition and subtraction together: (train, held_out)."""
    add_train, add_held = arithmetic_examples("+")
    sub_train, sub_held = arithmetic_examples("-")
    return add_train + sub_train, add_held + sub_held


def render_conversation(question: str, answer: str) -> str:
    """One exchange in ChatML, as the chat template writes it."""
    return render_chat([{"role": "user", "content": question},
                        {"role": "assistant", "content": answer}], add_generation_prompt=False)


def normalize_answer(text: str) -> str:
    """Exact match ignores surrounding whitespace and a trailing period (as training/tasks.py)."""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


class ChatBatches:
    """Conversations as token ids, and random batches of them for next-token training with
    the loss on the assistant's reply only (its digits and the <|im_end|> that ends it).

    A batch is (ids (B, T), rows, targets): sequences right-padded to the longest one (the
    causal mask keeps padding out of every real position), the flat indices into (B*T) of the
    positions whose next token is in the reply, and those next tokens.
    """

    def __init__(self, tokenizer, examples: list[Example]):
        self.prompts = [tokenizer.chat_prompt(q) for q, _ in examples]
        self.replies = [tokenizer.encode(a) + [tokenizer.eos_id] for _, a in examples]
        self.pad = tokenizer.pad_id

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seqs = [self.prompts[i] + self.replies[i] for i in indices]
        width = max(map(len, seqs)) - 1  # the last token is only a target
        ids = np.full((len(seqs), width), self.pad, np.int64)
        rows, targets = [], []
        for r, (i, seq) in enumerate(zip(indices, seqs)):
            ids[r, : len(seq) - 1] = seq[:-1]
            first = len(self.prompts[i]) - 1  # this position predicts the reply's first token
            rows.extend(range(r * width + first, r * width + len(seq) - 1))
            targets.extend(seq[first + 1 :])
        return ids, np.array(rows, np.int64), np.array(targets, np.int64)
