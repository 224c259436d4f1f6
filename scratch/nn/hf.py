"""A scratch Llama as a Hugging Face model folder, written and read with numpy alone.

A model file is named arrays plus a little JSON. `model.safetensors` is
    8 bytes: the header's length n (unsigned, little-endian)
    n bytes: a JSON header {name: {"dtype": "F32", "shape": [...], "data_offsets": [a, b]}, ...}
             (padded with spaces to a multiple of 8)
    the arrays' raw little-endian bytes, one after another (a..b counted from here)
and `config.json` says how to wire the arrays together (sizes, layers, heads, norm epsilon,
rope base). With the tokenizer files beside them, that is everything transformers, the ONNX and
GGUF exporters and the chat app need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from scratch import helpers
from scratch.nn.llama import Llama, LlamaConfig
from scratch.nn.tokenizer import EOS, IM_END, IM_START, Tokenizer

DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2"),
          "I64": np.dtype("<i8"), "I32": np.dtype("<i4")}
CODES = {dtype: code for code, dtype in DTYPES.items()}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
                      ) -> bytes:
    """The safetensors encoding of named arrays (sorted by name, as the reference writer)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = array.dtype.newbyteorder("<")
        if dtype not in CODES:
            raise ValueError(f"{name}: dtype {array.dtype} is not supported")
        raw = array.astype(dtype, copy=False).tobytes()
        header[name] = {"dtype": CODES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    if len(raw) < 8 + n:
        raise ValueError(f"{path}: not a safetensors file (header runs past the end)")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def hf_config(cfg: LlamaConfig, tokenizer: Tokenizer) -> dict:
    """config.json of the equivalent LlamaForCausalLM (transformers 5 layout)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings, "initializer_range": cfg.init_std,
        "bos_token_id": tokenizer.ids[EOS], "eos_token_id": tokenizer.ids[IM_END],
        "pad_token_id": tokenizer.ids[EOS], "dtype": "float32", "use_cache": True,
    }


def config_from_hf(config: dict) -> LlamaConfig:
    if (config.get("architectures") or ["?"])[0] != "LlamaForCausalLM":
        raise ValueError(f"not a LlamaForCausalLM config: {config.get('architectures')}")
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)
    heads = config["num_attention_heads"]
    if config.get("head_dim", config["hidden_size"] // heads) * heads != config["hidden_size"]:
        raise ValueError("head_dim * heads != hidden_size is not supported")
    return LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        tie_word_embeddings=config.get("tie_word_embeddings", True),
        init_std=config.get("initializer_range", 0.02))


def save_folder(out: str | os.PathLike, model: Llama, tokenizer: Tokenizer,
                extra_files: dict[str, str] | None = None) -> Path:
    """Write the model folder: config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json, chat_template.jinja, special_tokens_map.json (and extra text
    files), as one unit through scratch/helpers.py's `write_folder`: an older folder there is
    replaced, with everything derived from its weights (onnx/, gguf/)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")

    def as_json(payload, indent: int | None = 2) -> str:
        return json.dumps(payload, indent=indent) + "\n"

    files: dict[str, bytes | str] = {
        "config.json": as_json(hf_config(model.config, tokenizer)),
        "model.safetensors": safetensors_bytes(model.state_dict(), {"format": "pt"}),
        "tokenizer.json": as_json(tokenizer.to_json(), indent=None),
        "tokenizer_config.json": as_json(
            tokenizer.config_json(model.config.max_position_embeddings)),
        "special_tokens_map.json": as_json({"eos_token": IM_END, "pad_token": EOS,
                                            "additional_special_tokens": [IM_START]}),
        "chat_template.jinja": tokenizer.config_json(0)["chat_template"],
        **(extra_files or {}),
    }
    return helpers.write_folder(out, files)


def load_folder(folder: str | os.PathLike) -> tuple[Llama, Tokenizer]:
    """A LlamaForCausalLM folder (float32 weights, our tokenizer kind) as a scratch Llama."""
    folder = Path(folder)
    cfg = config_from_hf(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    model = Llama(cfg, np.random.default_rng(0))
    state = load_safetensors(folder / "model.safetensors")
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict({k: v.astype(np.float32) for k, v in state.items()})
    tok = Tokenizer.from_json(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
    return model, tok
