"""Export a model folder to GGUF for llama.cpp, with an Ollama Modelfile next to it.

    python scripts/export_gguf.py models/tiny-chat [--outtype f16|q8_0|f32] [--force]

Writes models/tiny-chat/gguf/tiny-chat-<outtype>.gguf, a summary beside it (<that name>.json:
size, and the fingerprint of the weights it was made from) and models/tiny-chat/gguf/Modelfile
(FROM that file). Then: ollama create mlzero-tiny -f models/tiny-chat/gguf/Modelfile
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from serving.helpers import (  # noqa: E402
    ArgumentParser,
    UsageError,
    atomic_write_json,
    atomic_write_text,
    cli_main,
    require_writable_file,
)
from training.export.gguf import OUTTYPES, export_gguf, file_stem, read_config  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python scripts/export_gguf.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path,
                   help="model folder (config.json, model.safetensors, tokenizer)")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="f16",
                   help="weight type (default f16)")
    p.add_argument("--out-dir", type=Path, help="where to write (default <model>/gguf)")
    p.add_argument("--name", help="file name stem (default: the folder's name)")
    p.add_argument("--system",
                   help="default system prompt for the Modelfile (default: the template's own)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    p.add_argument("--json", type=Path, help="also write a JSON summary here")
    args = p.parse_args(argv)

    model: Path = args.model
    config = read_config(model)  # one-line errors for non-models and unsupported architectures
    name = file_stem(args.name) if args.name is not None else model.resolve().name
    out_dir = args.out_dir or model / "gguf"
    target = out_dir / f"{name}-{args.outtype}.gguf"
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; to overwrite it, run: python scripts/export_gguf.py "
                         f"{model} --outtype {args.outtype} --force")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} is a file; give a folder")
    for path in (target, args.json):  # both before the export, not after it
        if path is not None:
            require_writable_file(path)
    from training.export.ollama import modelfile_for

    # The Modelfile is derived first: a template Ollama cannot express fails before the export.
    text = modelfile_for(model, target, context_length=config.get("max_position_embeddings"),
                         system=args.system)
    summary = export_gguf(model, target, args.outtype, name=name)
    atomic_write_text(out_dir / "Modelfile", text)
    summary["modelfile"] = str(out_dir / "Modelfile")
    atomic_write_json(target.with_suffix(".json"), summary)
    if args.json:
        atomic_write_json(args.json, summary)
    mb = summary["bytes"] / 1e6
    print(f"wrote {target} ({mb:.2f} MB, {args.outtype}) and {summary['modelfile']}")
    if summary["f16_fallback"]:
        print(f"note: kept {len(summary['f16_fallback'])} tensor(s) in f16 "
              "(rows not divisible by 32)")
    print(f"next: ollama create {name} -f {summary['modelfile']}")


if __name__ == "__main__":
    cli_main(main)()
