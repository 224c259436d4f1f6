"""Export a model folder to ONNX with a KV cache: python scripts/export_onnx.py models/tiny-chat"""

import sys
from pathlib import Path

sys.path.insert(0,
                str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed

from serving.helpers import ArgumentParser, cli_main  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python scripts/export_onnx.py", description=__doc__)
    p.add_argument("model", type=Path, help="model folder (config.json + model.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing onnx/ folder")
    p.add_argument("--opset", type=int, default=18,
                   help="ONNX opset: 18 (default) or newer; export.json records the one written")
    args = p.parse_args(argv)
    from training.export.onnx import describe, export_onnx

    print(describe(export_onnx(args.model, force=args.force, opset=args.opset)))


if __name__ == "__main__":
    cli_main(main)()
