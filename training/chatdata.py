"""Chat datasets in the standard conversational format, and their tokenisation.

A row is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}. Rows load
from the built-in generated tasks, local JSONL/JSON/parquet files or folders, or a hub id, all
through `datasets`. Only assistant tokens carry a loss: labels are -100 everywhere else.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training import tasks
from training.common import UsageError, atomic_write_text
from training.modelfolder import looks_like_hub_id

BUILTIN = "builtin"
ROLES = {"system", "user", "assistant"}
IGNORE = -100


class BadRow(ValueError):
    """A row that cannot be trained on; the message is its reason (used as a count key)."""


# How many times each task's rows appear in the built-in dataset. Subtraction (borrows, signs)
# needs more examples than addition; the glossary has ~150 rows
# against 9,000 per arithmetic task; without weight it would be seen a handful of times.
BUILTIN_REPEATS = {"subtraction": 2, "glossary": 8}
# Sums and differences with a one-digit operand ("What is 58 + 1?") are a fifth of the
# questions but need their own digit alignment: nearly all the held-out mistakes of a model
# trained without this weight were of that kind (see "mistakes" in eval.json).
ONE_DIGIT_OPERAND_REPEATS = 3


def repeats(ex: tasks.Example) -> int:
    """How many times a training example appears in the built-in dataset."""
    n = BUILTIN_REPEATS.get(ex.task, 1)
    return n * ONE_DIGIT_OPERAND_REPEATS if tasks.has_one_digit_operand(ex) else n


def builtin_rows() -> list[dict]:
    return [{"messages": ex.messages(), "task": ex.task}
            for ex in tasks.train_examples() for _ in range(repeats(ex))]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def load_rows(spec: str, split: str = "train") -> list[dict]:
    """Rows of a dataset given as 'builtin', a local file/folder, or a hub id."""
    if spec == BUILTIN:
        return builtin_rows()
    import datasets

    path = Path(spec)
    try:
        if path.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
            if kind is None:
                raise UsageError(f"{spec}: expected a .jsonl, .json or .parquet file")
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif path.is_dir() or looks_like_hub_id(spec):
            ds = datasets.load_dataset(spec, split=split)
        else:
            raise UsageError(f"dataset {spec!r} is neither a local file/folder nor a hub id")
    except UsageError:
        raise
    except Exception as err:  # datasets raises many types; the user needs one line
        raise UsageError(f"cannot load dataset {spec!r}: {str(err).splitlines()[0]}") from None
    if "messages" not in ds.column_names:
        raise UsageError(f"dataset {spec!r} has no 'messages' column (columns: {ds.column_names})")
    return ds.to_list()


def check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRow("messages is not a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRow("unknown role")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise BadRow("empty content")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn")


def _render(tok, messages, add_generation_prompt: bool) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tokenize=True, return_dict=False))


def encode(tok, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; labels mask all but the assistant turns.

    Works with any chat template that renders a conversation as the concatenation of its
    turns: the assistant span of turn i is what rendering messages[:i+1] adds to the
    generation prompt of messages[:i].
    """
    check_messages(messages)
    ids = _render(tok, messages, add_generation_prompt=False)
    if len(ids) > max_len:
        raise BadRow("over-long")
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tok, messages[:i], add_generation_prompt=True))
        upto = _render(tok, messages[: i + 1], add_generation_prompt=False)
        if ids[: len(upto)] != upto:
            raise BadRow("chat template is not prefix-stable")
        labels[start : len(upto)] = ids[start : len(upto)]
    return ids, labels


@dataclass
class Encoded:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)


def encode_rows(tok, rows: list[dict], max_len: int, on_bad: str = "skip") -> Encoded:
    """Encode all rows; count bad ones by reason and skip them, or reject the dataset."""
    enc = Encoded()
    for row in rows:
        try:
            ids, labels = encode(tok, row.get("messages"), max_len)
        except BadRow as err:
            enc.bad[str(err)] += 1
            continue
        enc.input_ids.append(ids)
        enc.labels.append(labels)
    if enc.bad:
        summary = ", ".join(f"{n} {reason}" for reason, n in enc.bad.most_common())
        if on_bad == "reject":
            raise UsageError(f"dataset has {sum(enc.bad.values())} bad rows ({summary}); "
                             "fix them or pass --bad-rows skip")
        print(f"skipped {sum(enc.bad.values())} bad rows: {summary}")
    if not enc.input_ids:
        raise UsageError("no usable rows in the dataset")
    return enc
