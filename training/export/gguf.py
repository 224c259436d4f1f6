"""Write a transformers Llama model folder as one GGUF file that llama.cpp (and Ollama) load.

    export_gguf("models/tiny-chat", "models/tiny-chat/gguf/tiny-chat-f16.gguf", "f16")

Everything goes through the `gguf` package (llama.cpp's own Python library): the writer, the
tensor-name map, the quantizer. We do not call llama.cpp's convert_hf_to_gguf.py because it
refuses BPE vocabularies it has not seen (it identifies pre-tokenizers by hashing sample
tokenizations); instead the pre-tokenizer is recognised here from its structure in tokenizer.json.

Supported: `LlamaForCausalLM` checkpoints with either tokenizer kind llama.cpp implements:
- byte-level BPE (our tiny models, SmolLM2) whose pre-tokenizer llama.cpp knows
  (see detect_pre_tokenizer), written as tokenizer model "gpt2";
- SentencePiece-style BPE with byte fallback (TinyLlama, Llama 2: a "▁"-prepending normalizer
  and <0xXX> byte tokens), written as tokenizer model "llama" (see add_llama_vocab).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from serving.helpers import (
    UsageError,
    atomic_path,
    first_line,
    made_by_hint,
    require_model,
    weight_files,
    weights_fingerprint,
)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def _qwen2_split() -> str:
    from training.tokenizer import SPLIT_PATTERN

    return SPLIT_PATTERN


def detect_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp name (tokenizer.ggml.pre) of the pre-tokenizer in a tokenizer.json.

    Recognised by structure, so a vocabulary llama.cpp has never seen still maps onto the
    regex llama.cpp implements. Anything else is refused: a wrong name tokenizes differently
    without any error at load time.
    """
    from training.tokenizer import GGUF_PRE_TOKENIZER

    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"]:
        regex = steps[0].get("pattern", {}).get("Regex")
        if (regex == _qwen2_split() and steps[0].get("behavior") == "Isolated"
                and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")):
            return GGUF_PRE_TOKENIZER
    if kinds == ["Digits", "ByteLevel"]:  # SmolLM/SmolLM2
        if steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise UsageError(f"unsupported tokenizer: pre-tokenizer {kinds or 'none'} has no llama.cpp "
                     "equivalent here (supported: byte-level BPE with the qwen2, smollm or "
                     "gpt-2 split)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None


def file_stem(name: str) -> str:
    """`name` when it is a plain file name stem (--name), or a UsageError: a path in it
    (`../../escape`) would write the GGUF outside the output folder, and a leading dot would
    hide it (and look like one of the atomic writers' temporary files)."""
    if not name or name.startswith(".") or Path(name).name != name or "\\" in name:
        raise UsageError(f"--name {name!r} must be a plain file name, without a path or a "
                         "leading dot (e.g. --name tiny-chat)")
    return name


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a finished Llama model folder, or a one-line UsageError."""
    require_model(model_dir, made_by_hint(model_dir))
    config = _read_json(model_dir / "config.json")
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UsageError(f"unsupported architecture {archs[0]} in {model_dir}/config.json; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if (config.get("rope_scaling") or {}).get("rope_type", "default") not in ("default", None):
        raise UsageError(f"unsupported rope_scaling {config['rope_scaling']} in {model_dir}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise UsageError(f"{model_dir}/config.json: {key} must be a positive integer, "
                             f"got {config.get(key)!r}")
    return config


def rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 moved rope_theta into rope_parameters.
    nested = (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return float(config.get("rope_theta") or nested)


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k projection rows from HF's rotate-half rope layout to llama.cpp's.

    HF rotates dimension i with i + head_dim/2; llama.cpp's Llama rope (GGML_ROPE_TYPE_NORMAL)
    rotates adjacent pairs (2i, 2i+1). Interleaving each head's two halves makes them equal.
    Getting this wrong still loads and tokenizes fine; only logits reveal it.
    """
    head_dim = w.shape[0] // n_head
    halves = w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
    return halves.swapaxes(1, 2).reshape(w.shape)


def _tensor_type(name: str, data: np.ndarray, outtype: str) -> gguf.GGMLQuantizationType:
    """llama.cpp's policy: 1-D tensors (norms) stay f32; q8_0 needs rows divisible by its block."""
    if data.ndim == 1 or outtype == "f32":
        return gguf.GGMLQuantizationType.F32
    qtype = OUTTYPES[outtype][0]
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        if data.shape[-1] % block:
            return gguf.GGMLQuantizationType.F16
    return qtype


def add_hparams(w: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    w.add_rope_freq_base(rope_theta(config))
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(config["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def chat_template(model_dir: Path) -> str | None:
    """The Jinja chat template: chat_template.jinja (transformers 5) or tokenizer_config.json."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg_path = model_dir / "tokenizer_config.json"
    template = _read_json(cfg_path).get("chat_template") if cfg_path.is_file() else None
    return template if isinstance(template, str) else None


def check_sentencepiece_layout(tok_json: dict[str, Any]) -> None:
    """Refuse byte-fallback tokenizers whose text handling llama.cpp's "llama" model would not
    reproduce. That model prepends "▁" to every text fragment (also after a special token) and
    turns spaces into "▁", with no further splitting: exactly the normalizer of Llama 2's and
    TinyLlama's tokenizer.json (Prepend "▁", then Replace " " with "▁") and no pre-tokenizer.
    """
    norm = tok_json.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    expected = [{"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]
    if steps != expected or tok_json.get("pre_tokenizer"):
        pre = (tok_json.get("pre_tokenizer") or {}).get("type")
        kinds = [k for k in [s.get("type") for s in steps if s] + [pre] if k]
        raise UsageError(f"unsupported tokenizer: byte-fallback BPE with {kinds} has "
                         "no llama.cpp equivalent here (supported: Llama 2 / TinyLlama layout, "
                         "normalizer Prepend('▁') + Replace(' ', '▁') and no pre-tokenizer)")


def merge_scores(model: dict[str, Any]) -> dict[str, float]:
    """SentencePiece scores from BPE merge ranks.

    llama.cpp's "llama" tokenizer repeatedly joins the adjacent pair whose joined token has the
    highest score; HF BPE joins the pair with the lowest merge rank. Scoring each token by minus
    the rank of the first merge that produces it makes both pick the same pair. (gguf's
    LlamaHfVocab gives every token -1000, which would merge left to right instead.)
    """
    scores: dict[str, float] = {}
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -1.0 - rank)
    return scores


def add_llama_vocab(w: gguf.GGUFWriter, model_dir: Path, tok_json: dict[str, Any],
                    n_vocab: int) -> None:
    """A SentencePiece-style BPE vocabulary as llama.cpp's "llama" tokenizer model: tokens,
    scores and types (<0xXX> byte tokens BYTE, special tokens CONTROL)."""
    check_sentencepiece_layout(tok_json)
    vocab = gguf.LlamaHfVocab(model_dir)  # reads tokenizer.json through transformers
    scores = merge_scores(tok_json["model"])
    tokens: list[str] = []
    types: list[gguf.TokenType] = []
    for text, _placeholder_score, token_type in vocab.all_tokens():
        tokens.append(text.decode("utf-8"))
        types.append(token_type)
    if len(tokens) > n_vocab:
        raise UsageError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is "
                         f"{n_vocab}")
    # Embedding rows past the tokenizer (padding to a round size) get unused placeholder tokens.
    pad = range(len(tokens), n_vocab)
    tokens += [f"[PAD{i}]" for i in pad]
    types += [gguf.TokenType.UNUSED] * len(pad)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([scores.get(t, 0.0) for t in tokens])
    w.add_token_types(types)
    w.add_add_space_prefix(True)  # the Prepend("▁") normalizer checked above


def add_byte_level_vocab(w: gguf.GGUFWriter, tok_json: dict[str, Any], n_vocab: int) -> None:
    """A byte-level BPE vocabulary as llama.cpp's "gpt2" tokenizer model (merges come later)."""
    pre = detect_pre_tokenizer(tok_json)
    vocab: dict[str, int] = dict(tok_json["model"]["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    vocab.update({content: t["id"] for content, t in added.items()})
    if max(vocab.values()) >= n_vocab:
        raise UsageError(f"tokenizer has ids up to {max(vocab.values())} but the model's "
                         f"vocab_size is {n_vocab}")
    by_id = {i: s for s, i in vocab.items()}
    # Embedding rows past the tokenizer (padding to a round size) get unused placeholder tokens.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    types = []
    for i, s in enumerate(tokens):
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif s in added:
            special = added[s]["special"]
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)


def add_tokenizer(w: gguf.GGUFWriter, model_dir: Path, config: dict[str, Any]) -> None:
    """Vocabulary (byte-level or byte-fallback BPE), special ids and the chat template."""
    if not (model_dir / "tokenizer.json").is_file():
        raise UsageError(f"{model_dir} has no tokenizer.json (a fast BPE tokenizer is required)")
    tok_json = _read_json(model_dir / "tokenizer.json")
    model = tok_json.get("model", {})
    n_vocab = config["vocab_size"]
    if model.get("type") != "BPE":
        raise UsageError(f"unsupported tokenizer model {model.get('type')} in {model_dir}: "
                         "only BPE "
                         "(byte-level, or SentencePiece-style with byte fallback) is exported")
    byte_fallback = bool(model.get("byte_fallback"))
    if byte_fallback:
        add_llama_vocab(w, model_dir, tok_json, n_vocab)
    else:
        add_byte_level_vocab(w, tok_json, n_vocab)

    # SpecialVocab reads the special-token ids, whether BOS/EOS are added (tokenizer_config, else
    # the post-processor), and merges, which only the byte-level model uses.
    special = gguf.SpecialVocab(model_dir, load_merges=not byte_fallback, n_vocab=n_vocab)
    # Our tokenizers name no BOS; the model config's bos id (<|endoftext|>) is what llama.cpp
    # reports, but it is never added: prompts tokenize the same as in transformers.
    if "bos" not in special.special_token_ids and isinstance(config.get("bos_token_id"), int):
        special.special_token_ids["bos"] = config["bos_token_id"]
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.chat_template = chat_template(model_dir)
    special.add_to_gguf(w, quiet=True)


def load_state(model_dir: Path) -> dict[str, np.ndarray]:
    """All weights as float32 numpy arrays (via torch: bf16 checkpoints have no numpy dtype).
    A tensor with NaN or infinity (a diverged run) is refused: it would load and answer
    garbage in llama.cpp."""
    from safetensors.torch import load_file

    state = {}
    for f in weight_files(model_dir):
        try:
            tensors = load_file(f)
        except Exception as err:  # truncated or not safetensors at all
            raise UsageError(f"cannot read {f}: {first_line(err)}; rebuild it with "
                             f"{made_by_hint(model_dir)}") from None
        state.update({k: v.float().numpy() for k, v in tensors.items()})
    bad = [k for k, v in state.items() if not np.isfinite(v).all()]
    if bad:
        raise UsageError(f"{model_dir} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): "
                         "the training run diverged; train it again with a lower --lr")
    return state


def add_tensors(w: gguf.GGUFWriter, config: dict[str, Any], state: dict[str, np.ndarray],
                outtype: str) -> list[str]:
    """Rename, permute and convert every weight; returns tensors q8_0 had to keep in f16."""
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    fallback = []
    for hf_name, data in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope_freq_base
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings", True):
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UsageError(f"cannot map tensor {hf_name!r} to a llama.cpp tensor name")
        if hf_name.endswith("q_proj.weight"):
            data = rope_permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = rope_permute(data, n_kv)
        qtype = _tensor_type(name, data, outtype)
        if outtype == "q8_0" and data.ndim > 1 and qtype != gguf.GGMLQuantizationType.Q8_0:
            fallback.append(name)
        w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), qtype), raw_dtype=qtype)
    return fallback


def export_gguf(model_dir: str | Path, out_path: str | Path, outtype: str = "f16",
                name: str | None = None) -> dict[str, Any]:
    """Write `model_dir` as one GGUF file at `out_path` (atomically); return a summary."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    config = read_config(model_dir)
    w = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(name or model_dir.resolve().name)
    w.add_file_type(OUTTYPES[outtype][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hparams(w, config)
    add_tokenizer(w, model_dir, config)
    fallback = add_tensors(w, config, load_state(model_dir), outtype)

    with atomic_path(out_path) as tmp:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"path": str(out_path), "outtype": outtype, "bytes": out_path.stat().st_size,
            "f16_fallback": fallback, "made_from": {"weights": weights_fingerprint(model_dir)}}
