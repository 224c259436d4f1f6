"""Build a static site that chats with a model entirely in the visitor's browser.

    python -m serving.web --model models/tiny-chat --out site
    python -m http.server -d site 8000        # any static file server; then open the page

Writes index.html, its JavaScript (from the npm packages pinned in serving/web/package-lock.json,
installed with `npm ci` on first use), site.json and the model's GGUF file.
No request leaves the host that serves the folder; no inference runs on a server.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from serving.helpers import (
    ArgumentParser,
    UsageError,
    atomic_write_json,
    cli_main,
    made_by_hint,
    require_model,
    require_writable,
    require_writable_file,
)
from serving.web.build import MADE_BY, OUTTYPES, build_site


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog=MADE_BY, description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/tiny-chat"),
                   help="a finished model folder with a GGUF export (default: models/tiny-chat)")
    p.add_argument("--out", type=Path, default=Path("site"), help="the site folder (default: site)")
    p.add_argument("--outtype", choices=OUTTYPES, default=None,
                   help="which GGUF export to ship (default: the smallest there: "
                        f"{', then '.join(OUTTYPES)})")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it is not a site this command built")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the summary as JSON")
    args = p.parse_args(argv)
    require_model(args.model, made_by=made_by_hint(args.model))
    if not (args.model / "tokenizer.json").is_file():
        raise UsageError(f"{args.model} has no tokenizer.json (the chat template and special "
                         f"tokens come from it); run: {made_by_hint(args.model)}")
    require_writable(args.out)
    if args.json:
        require_writable_file(args.json)  # a folder there would fail only after the build
    retry = f"{MADE_BY} --model {shlex.quote(str(args.model))} --out {shlex.quote(str(args.out))}"
    summary = build_site(args.model, args.out, args.outtype, args.force, retry)
    if args.json:
        atomic_write_json(args.json, summary)
    print(f"mlzero web: {summary['out']}/ ({summary['files']} files, "
          f"{summary['bytes'] / 1e6:.1f} MB; {summary['model']}, {summary['runtime']})")
    print(f"serve it with any static file server: python -m http.server -d {summary['out']} 8000 "
          "then open http://127.0.0.1:8000/")


if __name__ == "__main__":
    cli_main(main)()
