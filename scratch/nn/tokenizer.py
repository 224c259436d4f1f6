"""A byte-level BPE tokenizer in the format of Hugging Face's tokenizer.json, without the
`tokenizers` library: learn merges, encode, decode, write and read the file.

It is the project's own tokenizer kind (training/tokenizer.py), built the same way:
- special tokens <|endoftext|>, <|im_start|>, <|im_end|> first (ids 0, 1, 2), cut out of the
  text before anything else;
- the rest split by Qwen2's pattern (`SPLIT_PATTERN`: one digit per piece, so numbers are read
  digit by digit and arithmetic stays learnable; words with their leading space);
- each piece's UTF-8 bytes mapped to printable characters (GPT-2's byte-to-unicode table), so
  every byte is a token and no text is unknown;
- then BPE: adjacent tokens of a piece are joined by the merge rules, lowest rank first.

Because the pre-tokenizer is one llama.cpp implements by name ("qwen2"), the GGUF exporter
writes the file as it is and llama.cpp tokenizes exactly like transformers does.

Python's `re` has no \\p{L} / \\p{N}; the pattern is compiled with explicit classes of every
Unicode letter and number that `unicodedata` knows (built once, on first use).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIALS = (EOS, IM_START, IM_END)

# Qwen2's split (llama.cpp: LLAMA_VOCAB_PRE_TYPE_QWEN2), character for character as in
# training/tokenizer.py (a test checks that they are equal).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, the chat format of models/tiny-chat (training/tokenizer.py's CHAT_TEMPLATE).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """CHAT_TEMPLATE rendered in Python (no Jinja)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes stand for themselves, the others (controls, space,
    0x7f-0xa0, 0xad) are shifted to code points 256 and up, so every byte is a visible char."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _class_bodies() -> dict[str, str]:
    """Regex character-class bodies of every Unicode letter (L) and number (N) code point."""
    spans: dict[str, list[list[int]]] = {"L": [], "N": []}
    for cp in range(sys.maxunicode + 1):
        kind = unicodedata.category(chr(cp))[0]
        if kind in spans:
            runs = spans[kind]
            if runs and runs[-1][1] == cp - 1:
                runs[-1][1] = cp
            else:
                runs.append([cp, cp])
    return {kind: "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}"
                          for a, b in runs) for kind, runs in spans.items()}


def translate_pattern(pattern: str, bodies: dict[str, str]) -> str:
    """Rewrite \\p{X} for Python's `re`: inside a class [...] as X's ranges, outside as
    [ranges]."""
    out, inside, i = [], False, 0
    while i < len(pattern):
        if pattern.startswith("\\p{", i):
            body = bodies[pattern[i + 3]]
            out.append(body if inside else f"[{body}]")
            i += 5
        elif pattern[i] == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        else:
            inside = (inside or pattern[i] == "[") and pattern[i] != "]"
            out.append(pattern[i])
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1)
def split_regex() -> re.Pattern:
    """SPLIT_PATTERN compiled by Python's `re` (built once, ~1 s: it walks all of Unicode)."""
    return re.compile(translate_pattern(SPLIT_PATTERN, _class_bodies()))


def pre_tokenize(text: str) -> list[str]:
    """The pieces BPE works within (Qwen2's split, 'isolated': every character in one piece)."""
    return split_regex().findall(text)


class Tokenizer:
    """Byte-level BPE. ids: the specials, then the 256 byte tokens, then one per merge."""

    def __init__(self, merges: Iterable[tuple[str, str]] = ()):
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.merges = [tuple(m) for m in merges]
        tokens = [*SPECIALS, *(self.byte_char[b] for b in range(256))]
        tokens += [a + b for a, b in self.merges]
        if len(set(tokens)) != len(tokens):
            raise ValueError("merges make a token twice")
        self.tokens = tokens
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.special_ids = {t: self.ids[t] for t in SPECIALS}
        self._special_split = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def eos_id(self) -> int:
        """The end of a chat turn, where generation stops."""
        return self.ids[IM_END]

    @property
    def pad_id(self) -> int:
        return self.ids[EOS]

    # ------------------------------------------------------------------ learning merges
    @classmethod
    def train(cls, texts: Iterable[str], n_merges: int, min_count: int = 2) -> Tokenizer:
        """Learn up to n_merges merges: repeatedly join the most frequent adjacent pair inside
        the pieces of `texts` (special tokens excluded), ties broken by first appearance."""
        base = cls()
        counts: Counter[tuple[str, ...]] = Counter()
        for text in texts:
            for part in base._special_split.split(text):
                if part and part not in base.special_ids:
                    for piece in pre_tokenize(part):
                        counts[tuple(base.byte_char[b] for b in piece.encode("utf-8"))] += 1
        words = list(counts.items())
        merges: list[tuple[str, str]] = []
        while len(merges) < n_merges:
            pairs: Counter[tuple[str, str]] = Counter()
            for word, n in words:
                for pair in zip(word, word[1:]):
                    pairs[pair] += n
            if not pairs:
                break
            best, count = pairs.most_common(1)[0]
            if count < min_count:
                break
            merges.append(best)
            joined = best[0] + best[1]
            words = [(_join(word, best, joined), n) for word, n in words]
        return cls(merges)

    # ------------------------------------------------------------------ encode / decode
    def _bpe(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = tuple(self.byte_char[b] for b in piece.encode("utf-8"))
        while len(word) > 1:
            ranked = [(self.ranks.get(p, len(self.ranks)), p) for p in zip(word, word[1:])]
            rank, best = min(ranked)
            if rank == len(self.ranks):
                break
            word = _join(word, best, best[0] + best[1])
        ids = [self.ids[t] for t in word]
        if len(self._cache) < 100_000:
            self._cache[piece] = ids
        return ids

    def encode(self, text: str, specials: bool = True) -> list[int]:
        """Token ids of `text`. specials=False reads special-token text as plain text (what the
        chat app does with typed messages)."""
        ids: list[int] = []
        parts = self._special_split.split(text) if specials else [text]
        for part in parts:
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                for piece in pre_tokenize(part):
                    ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out, pending = [], bytearray()
        for i in ids:
            token = self.tokens[int(i)]
            if token in self.special_ids:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                if not skip_special:
                    out.append(token)
            else:
                pending.extend(self.char_byte[c] for c in token)
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def chat_prompt(self, question: str) -> list[int]:
        """Ids of one user turn and the assistant's opening, as every runtime is given them."""
        return self.encode(render_chat([{"role": "user", "content": question}]))

    # ------------------------------------------------------------------ tokenizer.json
    def to_json(self) -> dict:
        """tokenizer.json as the `tokenizers` library writes it for training/tokenizer.py's
        tokenizer: the same pre-tokenizer, decoder and post-processor; our vocab and merges."""
        added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
        return {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False}]},
            "post_processor": {"type": "TemplateProcessing",
                               "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                        {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {}},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": dict(self.ids), "merges": [list(m) for m in self.merges]},
        }

    @staticmethod
    def config_json(max_length: int) -> dict:
        """tokenizer_config.json: what transformers' AutoTokenizer needs, the chat template
        included (ChatML, no BOS, <|im_end|> ends a turn)."""
        return {"backend": "tokenizers", "clean_up_tokenization_spaces": False,
                "eos_token": IM_END, "pad_token": EOS, "extra_special_tokens": [IM_START],
                "model_max_length": max_length, "tokenizer_class": "TokenizersBackend",
                "chat_template": CHAT_TEMPLATE}

    @classmethod
    def from_json(cls, data: dict) -> Tokenizer:
        """Read a tokenizer.json of this kind (ours, or training/tokenizer.py's: the same
        structure); anything else is refused, since it would encode differently."""
        model = data.get("model") or {}
        pre = data.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [])
        if (model.get("type") != "BPE" or model.get("byte_fallback") or len(steps) != 2
                or steps[0].get("pattern", {}).get("Regex") != SPLIT_PATTERN
                or steps[1].get("type") != "ByteLevel"):
            raise ValueError("not a byte-level BPE tokenizer with the Qwen2 split")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
        tok = cls(merges)
        vocab = dict(model["vocab"])
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
        if vocab != tok.ids:
            tok.tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
            tok.ids = vocab
            tok.special_ids = {t: vocab[t] for t in SPECIALS}
        return tok


def _join(word: tuple[str, ...], pair: tuple[str, str], joined: str) -> tuple[str, ...]:
    """`word` with every non-overlapping occurrence of `pair`, left to right, joined."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(joined)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
