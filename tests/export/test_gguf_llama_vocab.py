"""GGUF export of a TinyLlama-style model (SentencePiece-BPE with byte fallback, Zephyr chat
template), checked in llama.cpp: it tokenizes text as transformers does and computes what
PyTorch does. No TinyLlama download exists here; the local model copies its tokenizer layout."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.backend import Sampling
from serving.gguf_backend import GgufBackend
from serving.helpers import UsageError
from tests.export.test_gguf import torch_greedy
from tests.export.test_ollama import CHATS, go_render, parse_modelfile
from training.export.gguf import export_gguf, merge_scores
from training.export.ollama import derive_format, go_template, modelfile_for

N_NEW = 8
# Digits, non-ASCII (in-vocabulary pieces and byte fallback), runs of spaces, a special token
# inside text, and a rendered Zephyr turn: every place where the two tokenizers could disagree.
# "finereturn" is merged differently when pieces are joined left to right (equal scores, as
# gguf's LlamaHfVocab gives them) instead of by merge rank: fin+e+re+turn, not fin+er+e+turn.
TEXTS = ["What is 12+35? The answer is 47.", "Grüße aus München, 東京! 3.14",
         "Hello  world,   how are you today? I'm fine, thanks.", " leading space",
         "hi</s>\n<|assistant|>\n", "Ünïcödé ✓ 2024-06-01", "def foo(x): return x * 2",
         "It was finereturn"]


@pytest.fixture(scope="module")
def exports(random_tinyllama: Path) -> dict[str, Path]:
    return {t: Path(export_gguf(random_tinyllama, random_tinyllama / "gguf" / f"tl-{t}.gguf",
                                t)["path"])
            for t in ("f32", "f16")}


@pytest.fixture(scope="module")
def reference(random_tinyllama: Path):
    tok = AutoTokenizer.from_pretrained(random_tinyllama)
    model = AutoModelForCausalLM.from_pretrained(random_tinyllama, dtype=torch.float32).eval()
    # As in test_gguf: ban special tokens and lone bytes so llama.cpp reports every token id.
    banned = [i for i in range(len(tok)) if i in tok.all_special_ids or "\ufffd" in tok.decode([i])]
    return model, tok, banned


def test_metadata(random_tinyllama, exports, reference):
    _, tok, _ = reference
    fields = gguf.GGUFReader(exports["f16"]).fields

    def field(key):
        return fields[key].contents()

    assert field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.tokens") == tok.convert_ids_to_tokens(list(range(len(tok))))
    types = field("tokenizer.ggml.token_type")
    assert {types[i] for i in (0, 1, 2)} == {gguf.TokenType.CONTROL}  # <unk>, <s>, </s>
    assert {types[i] for i in range(3, 259)} == {gguf.TokenType.BYTE}  # <0x00>..<0xFF>
    assert types[259] == gguf.TokenType.NORMAL
    # Merged pieces score by merge rank; the first merge scores highest.
    scores = field("tokenizer.ggml.scores")
    first_merge = "".join(_first_merge(random_tinyllama))
    assert scores[tok.convert_tokens_to_ids(first_merge)] == max(s for s in scores if s < 0)
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
            field("tokenizer.ggml.unknown_token_id")) == (1, 2, 0)
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.ggml.add_space_prefix") is True
    assert "tokenizer.ggml.merges" not in fields  # the "llama" model merges by score
    assert field("tokenizer.chat_template") == tok.chat_template


def _first_merge(model_dir: Path) -> tuple[str, str]:
    import json

    return tuple(json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"][0])


def test_merge_scores_follow_rank():
    assert merge_scores({"merges": [["a", "b"], "ab c", ["a", "b"]]}) == {"ab": -1.0, "abc": -2.0}


@pytest.mark.parametrize("outtype,tol", [("f32", 1e-4), ("f16", 5e-2)])
def test_text_tokenizes_and_runs_like_transformers(random_tinyllama, exports, reference, outtype,
                                                   tol):
    """llama.cpp tokenizes each text itself (BOS added, specials parsed); its prompt length and
    its top-3 log-probs after the prompt equal PyTorch's on transformers' ids. Log-probs of a
    random model are a fingerprint of the exact ids: any different token moves them."""
    model, tok, banned = reference
    backend = GgufBackend(random_tinyllama, exports[outtype], n_threads=1)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        want, logprobs = torch_greedy(model, ids, N_NEW, banned)
        res = backend._complete(backend._request(text, Sampling(N_NEW), n_probs=3,
                                                 cache_prompt=False,
                                                 logit_bias=[[i, False] for i in banned]))
        assert res["usage"]["prompt_tokens"] == len(ids), text
        entries = res["choices"][0]["logprobs"]["content"]
        assert [e["id"] for e in entries] == want, f"{outtype}: {text!r}"
        for step, e in enumerate(entries):
            for top in e["top_logprobs"]:
                diff = abs(top["logprob"] - float(logprobs[step][top["id"]]))
                assert diff <= tol, f"{outtype}: {text!r} step {step}: {diff:.2e}"


def test_chat_prompt_greedy_matches_pytorch(random_tinyllama, exports, reference):
    """The Zephyr chat prompt as ids (how the serving backend sends it): same greedy tokens."""
    model, tok, banned = reference
    backend = GgufBackend(random_tinyllama, exports["f32"], n_threads=1)
    for chat in CHATS[:2]:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        want, _ = torch_greedy(model, ids, N_NEW, banned)
        assert [e["id"] for e in backend.greedy_tokens(ids, N_NEW, banned)] == want


def test_modelfile_for_zephyr_template(random_tinyllama, reference):
    """TinyLlama-Chat's template becomes an Ollama TEMPLATE that Go renders like Jinja."""
    _, tok, _ = reference
    text = modelfile_for(random_tinyllama, random_tinyllama / "gguf" / "tl-f16.gguf",
                         context_length=256)
    cmds = dict(parse_modelfile(text))
    assert cmds["FROM"] == "./tl-f16.gguf" and cmds["PARAMETER stop"] == "</s>"
    fmt = derive_format(tok)
    assert cmds["TEMPLATE"] == go_template(fmt)
    want = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
    assert go_render(go_template(fmt), CHATS, fmt.default_system) == want


def test_refuses_other_byte_fallback_layouts(random_tinyllama, tmp_path):
    """A Metaspace pre-tokenizer that skips the prefix after special tokens ("first") is not
    what llama.cpp does; it is refused, not exported to tokenize differently."""
    import json
    import shutil

    folder = tmp_path / "metaspace"
    shutil.copytree(random_tinyllama, folder, ignore=shutil.ignore_patterns("gguf"))
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = None
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                             "split": False}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UsageError, match="byte-fallback BPE with \\['Metaspace'\\]"):
        export_gguf(folder, tmp_path / "x.gguf", "f32")
