"""Build the static chat site: the page, the JavaScript it needs and the model's GGUF file.

The JavaScript comes from npm packages pinned in serving/web/package-lock.json (llama.cpp as
WebAssembly and a Jinja renderer), installed with `npm ci` once into a cache folder
outside the repository and copied into the site: the page loads nothing from any other host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from serving.gguf_backend import gguf_context
from serving.helpers import AtomicDir, UsageError, read_json_object

WEB = Path(__file__).parent
PAGE = WEB / "page"
MADE_BY = "python -m serving.web"
# Smallest download first; the server's gguf backend prefers f16 (closest to the weights).
OUTTYPES = ("q8_0", "f16", "f32")
# What the site copies out of node_modules: site path -> package path. Each is one ES module
# with no imports (wllama inlines its worker), or the WebAssembly file itself.
VENDOR = {
    "vendor/wllama/index.js": "@wllama/wllama/esm/index.js",
    "vendor/wllama/single-thread/wllama.wasm": "@wllama/wllama/esm/single-thread/wllama.wasm",
    "vendor/wllama/multi-thread/wllama.wasm": "@wllama/wllama/esm/multi-thread/wllama.wasm",
    "vendor/jinja.js": "@huggingface/jinja/dist/index.js",
}


def npm_folder() -> Path:
    """Where `npm ci` installs the pinned packages: a cache folder named by the lock file's hash,
    so a changed lock installs afresh and an unchanged one is reused."""
    lock = hashlib.sha256((WEB / "package-lock.json").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mlzero" / "web-npm" / lock


def node_modules(retry: str) -> Path:
    """The installed packages, running `npm ci` first when they are not there yet."""
    folder = npm_folder()
    if (folder / "node_modules").is_dir():
        return folder / "node_modules"
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise UsageError("npm and node are not installed (the site's JavaScript comes from npm "
                         f"packages); install Node.js with npm (apt-get install npm); run: {retry}")
    with AtomicDir(folder) as tmp:  # a failed or interrupted install leaves nothing behind
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(WEB / name, tmp / name)
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                              cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UsageError(f"npm ci failed in {tmp}: {tail}; check the network to the npm "
                             f"registry; run: {retry}")
    return folder / "node_modules"


def choose_gguf(model_dir: Path, outtype: str | None) -> Path:
    """The GGUF file the site ships: the asked outtype, else the smallest exported one."""
    export = f"python scripts/export_gguf.py {model_dir} --outtype {outtype or 'q8_0'}"
    for kind in [outtype] if outtype else OUTTYPES:
        path = model_dir / "gguf" / f"{model_dir.name}-{kind}.gguf"
        if path.is_file():
            return path
    asked = f"a {outtype} GGUF export" if outtype else "a GGUF export"
    raise UsageError(f"{model_dir} has no {asked} ({model_dir}/gguf/{model_dir.name}-"
                     f"{outtype or 'q8_0'}.gguf); run: {export}")


def site_config(model_dir: Path, gguf: Path, digest: str) -> dict[str, Any]:
    """What the page reads first (site.json): the model file and its checksum, the chat template,
    the values it renders with and its special tokens, the context window. Also marks the folder
    as a site."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    template = tok.chat_template
    if not isinstance(template, str):
        raise UsageError(f"{model_dir}: the tokenizer has no chat template; "
                         f"run: python -m training.finetune --out {model_dir}")
    context = gguf_context(tok)  # llama.cpp's window, as the gguf backend takes it
    return {
        "made_by": MADE_BY,
        "name": model_dir.name,
        "model": {"file": f"model/{gguf.name}", "bytes": gguf.stat().st_size, "sha256": digest},
        # the page splits the template's text at these, and tokenizes the rest as plain text
        "special_tokens": {t.content: i for i, t in tok.added_tokens_decoder.items()
                           if t.special},
        "chat_template": template,
        "template_vars": {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)},
        "context": context,
        "runtime": "wllama " + package_version("@wllama/wllama"),
    }


def package_version(name: str) -> str:
    lock = json.loads((WEB / "package-lock.json").read_text(encoding="utf-8"))
    return lock["packages"][f"node_modules/{name}"]["version"]


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy a file, returning its SHA-256 (read once)."""
    digest = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def is_site(folder: Path) -> bool:
    return read_json_object(folder / "site.json").get("made_by") == MADE_BY


def check_out(out: Path, model_dir: Path, force: bool, retry: str) -> None:
    """Refuse to replace a folder that is not a previous site (unless forced), and never one
    that holds the model itself."""
    if out.resolve() in (model_dir.resolve(), *model_dir.resolve().parents):
        raise UsageError(f"--out {out} would replace the folder that holds {model_dir}; "
                         f"choose another output folder; run: "
                         f"python -m serving.web --model {model_dir} --out site")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder name; "
                         f"run: python -m serving.web --model {model_dir} --out site")
    empty = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty and not is_site(out) and not force:
        raise UsageError(f"{out} exists and is not a site built by {MADE_BY}; pass --force to "
                         f"replace it; run: {retry} --force")


def build_site(model_dir: Path, out: Path, outtype: str | None = None, force: bool = False,
               retry: str = MADE_BY) -> dict[str, Any]:
    """Write the site to `out` (all or nothing) and return a summary: files and bytes."""
    gguf = choose_gguf(model_dir, outtype)
    check_out(out, model_dir, force, retry)
    modules = node_modules(retry)
    with AtomicDir(out) as tmp:
        for page_file in sorted(PAGE.iterdir()):
            shutil.copyfile(page_file, tmp / page_file.name)
        for site_path, package_path in VENDOR.items():
            (tmp / site_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(modules / package_path, tmp / site_path)
        digest = copy_hashed(gguf, tmp / "model" / gguf.name)
        config = site_config(model_dir, gguf, digest)
        (tmp / "site.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "model": config["model"]["file"], "runtime": config["runtime"],
            "files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "model_bytes": config["model"]["bytes"]}
