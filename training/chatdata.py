"""Chat datasets in the standard conversational format, and their tokenisation.

A row is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}. Rows load
from the built-in generated tasks, local JSONL/JSON files (read here, line by line, against that
schema: one odd row must not change how the others are read), or parquet files, dataset
folders and hub ids through `datasets`. Bad rows are reported by line. Conversations are
tokenized the way the served model sees them (serving.backend.ChatEncoder: message text never
becomes a control token). Only assistant tokens carry a loss: labels are -100 elsewhere.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.backend import ChatEncoder
from serving.helpers import UsageError, atomic_write_text
from training import tasks
from training.stage import looks_like_hub_id

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


def builtin_rows(taught: tuple[str, ...] | list[str] = tasks.TAUGHT, turns: int = 1,
                 seed: int = 0, limit: dict[str, int] | None = None) -> list[dict]:
    """The generated training conversations of the `taught` tasks, at most `limit[task]`
    questions of a task (a fixed random subset). With turns > 1, questions are dealt at random
    into conversations of that many turns: the chat template's fixed part (a model's default
    system prompt can be 20 tokens) is then paid once per conversation, not once per two-token
    answer, and every answer still carries a loss."""
    examples = tasks.train_examples(taught)
    for task, n in (limit or {}).items():
        mine = [ex for ex in examples if ex.task == task]
        keep = set(random.Random(f"{seed}-{task}").sample(mine, min(n, len(mine))))
        examples = [ex for ex in examples if ex.task != task or ex in keep]
    rows = [{"messages": ex.messages(), "task": ex.task}
            for ex in examples for _ in range(repeats(ex))]
    if turns <= 1:
        return rows
    random.Random(f"{seed}-turns").shuffle(rows)
    return [{"messages": [m for r in rows[i:i + turns] for m in r["messages"]], "task": "mixed"}
            for i in range(0, len(rows), turns)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


@dataclass
class Row:
    """One conversation and where it came from ("line 7"), for error messages."""

    messages: object
    where: str


def load_rows(spec: str, split: str = "train", **builtin: Any) -> list[Row]:
    """Rows of a dataset given as 'builtin' (options: see builtin_rows), a local file or
    folder, or a hub id."""
    if spec == BUILTIN:
        return [Row(r["messages"], f"builtin row {i + 1}")
                for i, r in enumerate(builtin_rows(**builtin))]
    path = Path(spec)
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            rows = read_json_rows(path)
        elif path.suffix == ".parquet":
            rows = _load_with_datasets("parquet", spec, split, data_files=str(path))
        else:
            raise UsageError(f"{spec}: expected a .jsonl, .json or .parquet file")
    elif path.is_dir() or looks_like_hub_id(spec):
        rows = _load_with_datasets(spec, spec, split)
    else:
        raise UsageError(f"dataset {spec!r} is neither a local file/folder nor a hub id; "
                         "run: python -m training.finetune --help")
    if not rows:
        raise UsageError(f"dataset {spec!r} has no rows")
    return rows


def read_json_rows(path: Path) -> list[Row]:
    """A JSONL file (one conversation per line) or a JSON list of conversations. A line that
    is not JSON, or has no 'messages', is kept as a bad row and reported by its line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as err:
            raise UsageError(f"{path} is not valid JSON: {err}") from None
        found = [(item, f"item {i + 1}") for i, item in enumerate(items)]
    else:
        found = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    found.append((json.loads(line), f"line {n}"))
                except ValueError:
                    found.append((None, f"line {n}"))
    rows = [Row(item.get("messages") if isinstance(item, dict) else _NOT_JSON, where)
            for item, where in found]
    if rows and all(isinstance(item, dict) and "messages" not in item for item, _ in found):
        keys = sorted({k for item, _ in found for k in item})
        raise UsageError(f"{path} has no 'messages' field (fields: {', '.join(keys)})")
    return rows


_NOT_JSON = object()  # a row whose line did not parse


def _load_with_datasets(name: str, spec: str, split: str, **kw) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, **kw)
    except Exception as err:  # datasets raises many types; the user needs one line
        raise UsageError(f"cannot load dataset {spec!r}: {str(err).splitlines()[0]}") from None
    if "messages" not in ds.column_names:
        raise UsageError(f"dataset {spec!r} has no 'messages' column (columns: {ds.column_names})")
    return [Row(r["messages"], f"row {i + 1}") for i, r in enumerate(ds)]


def check_messages(messages) -> None:
    if messages is _NOT_JSON:
        raise BadRow("not JSON")
    if not isinstance(messages, list) or not messages:
        raise BadRow("messages is not a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRow("unknown role")
        if not isinstance(m.get("content"), str):
            raise BadRow("content is not a string")
        if not m["content"].strip():
            raise BadRow("empty content")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn")


def encode(chat: ChatEncoder, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; labels mask all but the assistant turns.

    Works with any chat template that renders a conversation as the concatenation of its
    turns: the assistant span of turn i is what rendering messages[:i+1] adds to the
    generation prompt of messages[:i].
    """
    check_messages(messages)
    ids = chat.encode(messages, add_generation_prompt=False).ids
    if len(ids) > max_len:
        raise BadRow("over-long")
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(chat.encode(messages[:i], add_generation_prompt=True).ids)
        upto = chat.encode(messages[: i + 1], add_generation_prompt=False).ids
        if ids[: len(upto)] != upto:
            raise BadRow("chat template is not prefix-stable")
        labels[start : len(upto)] = ids[start : len(upto)]
    return ids, labels


@dataclass
class Encoded:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)

    def lengths(self) -> np.ndarray:
        """Tokens per conversation: the trainer batches short and long ones apart."""
        return np.array([len(ids) for ids in self.input_ids])


def pad_batch(enc: Encoded, idx, pad: int) -> dict:
    """Rows `idx` of encoded conversations as one right-padded batch: input ids, labels
    (IGNORE on padding) and the attention mask, as torch tensors."""
    import torch

    width = max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(enc.input_ids[i])
        ids[row, :n] = torch.tensor(enc.input_ids[i])
        labels[row, :n] = torch.tensor(enc.labels[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def encode_rows(tok, rows: list[Row], max_len: int, on_bad: str = "skip") -> Encoded:
    """Encode all rows; report bad ones by line and skip them, or reject the dataset."""
    chat = ChatEncoder(tok)
    enc = Encoded()
    where: list[str] = []
    for row in rows:
        try:
            ids, labels = encode(chat, row.messages, max_len)
        except BadRow as err:
            enc.bad[str(err)] += 1
            where.append(f"{row.where}: {err}")
            continue
        enc.input_ids.append(ids)
        enc.labels.append(labels)
    if enc.bad:
        summary = ", ".join(f"{n} {reason}" for reason, n in enc.bad.most_common())
        first = "; ".join(where[:5]) + ("; ..." if len(where) > 5 else "")
        if on_bad == "reject":
            raise UsageError(f"dataset has {sum(enc.bad.values())} bad rows ({summary}: {first}); "
                             "fix them or pass --bad-rows skip")
        print(f"skipped {sum(enc.bad.values())} bad rows: {summary} ({first})")
    if not enc.input_ids:
        raise UsageError("no usable rows in the dataset")
    return enc
