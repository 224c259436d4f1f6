"""Export a transformers causal LM to ONNX: one decoder graph that takes and returns the KV cache.

Inputs:  input_ids [batch, seq], attention_mask [batch, past+seq], position_ids [batch, seq],
         past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] for every layer i
Outputs: logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past+seq, head_dim]

The first step passes an empty cache (past = 0); every later step feeds back the presents, so
generation is incremental. Names follow Hugging Face Optimum's, so other ONNX tools recognise them.
Uses PyTorch's own exporter (torch.export + onnxscript, `dynamo=True`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from serving.helpers import (
    AtomicDir,
    UsageError,
    atomic_write_json,
    first_line,
    made_by_hint,
    require_model,
    require_writable,
    weights_fingerprint,
)
from training.export import load_tokenizer

SUPPORTED = {"llama", "qwen2", "mistral"}
MIN_OPSET = 18  # torch's dynamo exporter writes nothing older
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "config.json", "generation_config.json")


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


class DecoderWithCache(torch.nn.Module):
    """Flat tensors in and out around a model that keeps its cache in a DynamicCache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past: tuple[torch.Tensor, ...]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
        presents = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


def load_checked(model_dir: Path):
    """The folder's model in PyTorch, or a one-line UsageError (not a model, unsupported
    architecture, unreadable or non-finite weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    require_model(model_dir, made_by_hint(model_dir))
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as err:  # a config.json transformers cannot read
        raise UsageError(f"{model_dir}/config.json: {first_line(err)}") from None
    if config.model_type not in SUPPORTED:
        raise UsageError(f"unsupported architecture {config.model_type!r}; "
                         f"supported: {', '.join(sorted(SUPPORTED))}")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     use_safetensors=True).eval()
    except Exception as err:  # truncated or corrupt safetensors
        raise UsageError(f"cannot load {model_dir}: {first_line(err)}") from None
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UsageError(f"{model_dir} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): "
                         "the training run diverged; train it again with a lower --lr")
    return model


def example_inputs(config, batch: int = 1, seq: int = 3, past: int = 2):
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    ids = torch.zeros((batch, seq), dtype=torch.long)
    mask = torch.ones((batch, past + seq), dtype=torch.long)
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, -1)
    cache = tuple(torch.zeros(batch, kv_heads, past, head_dim)
                  for _ in range(2 * config.num_hidden_layers))
    return ids, mask, pos, cache


def export_onnx(model_dir: str | Path, force: bool = False, opset: int = 18) -> Path:
    """Write <model_dir>/onnx/ (model.onnx + tokenizer files + export.json); return its path."""
    model_dir = Path(model_dir)
    out = model_dir / "onnx"
    if out.exists() and not force:
        raise UsageError(f"{out} exists; to overwrite it, run: python scripts/export_onnx.py "
                         f"{model_dir} --force")
    require_writable(out)
    check_opset(opset, model_dir)
    require_model(model_dir, made_by_hint(model_dir))
    load_tokenizer(model_dir)  # what serving loads beside the graph: refused now, not there
    model = load_checked(model_dir)
    wrapper = DecoderWithCache(model).eval()
    args = example_inputs(model.config)
    names_in, names_out = io_names(wrapper.n_layers)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    past, total = torch.export.Dim("past"), torch.export.Dim("total")
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
               tuple({0: batch, 2: past} for _ in range(2 * wrapper.n_layers)))
    with AtomicDir(out) as tmp:
        torch.onnx.export(wrapper, args, str(tmp / "model.onnx"), dynamo=True, opset_version=opset,
                          input_names=names_in, output_names=names_out, dynamic_shapes=dynamic,
                          external_data=False, verbose=False)
        check_written(tmp / "model.onnx", opset, model_dir)
        for name in TOKENIZER_FILES:
            if (model_dir / name).exists():
                shutil.copy(model_dir / name, tmp / name)
        diff = parity_check(model, tmp / "model.onnx")
        atomic_write_json(tmp / "export.json", {
            "source": str(model_dir), "opset": opset, "inputs": names_in, "outputs": names_out,
            "max_abs_logit_diff_vs_torch": diff, "torch": torch.__version__,
            "made_from": {"weights": weights_fingerprint(model_dir)},
        })
    return out


def check_opset(opset: int, model_dir: Path) -> None:
    """torch's exporter writes at least opset 18 (asked for less, it writes 18 all the same),
    and onnx knows none past its own newest: refuse those before the work."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {newest}; "
                         f"run: python scripts/export_onnx.py {model_dir} --opset {MIN_OPSET}")


def check_written(path: Path, opset: int, model_dir: Path) -> None:
    """The graph passes onnx's checker and is the opset asked for (export.json records it)."""
    import onnx

    hint = f"run: python scripts/export_onnx.py {model_dir} --force --opset {MIN_OPSET}"
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise UsageError(f"the graph exported at opset {opset} is not valid ONNX "
                         f"({first_line(err)}); {hint}") from None
    graph = onnx.load(str(path), load_external_data=False)
    wrote = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    if wrote != opset:
        raise UsageError(f"asked for opset {opset}, the exporter wrote {wrote}; {hint}")


def parity_check(model, onnx_path: Path) -> float:
    """Max |logit difference| between PyTorch and onnxruntime on a two-step decode."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    _, _, _, empty = example_inputs(config, batch=2, past=0)
    names_in, _ = io_names(config.num_hidden_layers)
    feed = {"input_ids": ids[:, :4].numpy(), "attention_mask": np.ones((2, 4), np.int64),
            "position_ids": np.tile(np.arange(4), (2, 1))}
    feed.update({n: t.numpy() for n, t in zip(names_in[3:], empty)})
    first = sess.run(None, feed)
    feed = {"input_ids": ids[:, 4:].numpy(), "attention_mask": np.ones((2, 7), np.int64),
            "position_ids": np.tile(np.arange(4, 7), (2, 1))}
    feed.update(dict(zip(names_in[3:], first[1:])))
    second = sess.run(None, feed)
    got = np.concatenate([first[0], second[0]], axis=1)
    return float(np.abs(got - ref).max())


def describe(out: Path) -> str:
    info = json.loads((out / "export.json").read_text())
    size = (out / "model.onnx").stat().st_size / 1e6
    diff = info["max_abs_logit_diff_vs_torch"]
    return f"wrote {out / 'model.onnx'} ({size:.1f} MB); max |logit diff| vs torch {diff:.2e}"
