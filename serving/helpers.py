"""The helpers that serving/ and training/ share: one CLI error contract, one atomic writer, one
"finished model folder" check.

Import rule: this module imports only the standard library. serving/ and training/ import it
(training may import serving; serving never imports training); scratch/ has its own
(scratch/helpers.py) because scratch imports neither.

The CLI contract: bad input prints exactly one line, `error: <what is wrong>; run: <a command
that works>`, on stderr and exits with status 2 — no traceback, nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

# ---------------------------------------------------------------------------- errors


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (libraries raise multi-line and empty messages)."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def program() -> str:
    """How the running command was started: `python -m training.finetune`, `python scripts/x.py`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return f"python {sys.argv[0]}"


def with_hint(message: str) -> str:
    """The message with a command that works: its own `run:`/`see:` hint, else `--help`."""
    message = message.replace("\n", " ")
    return message if ("; run: " in message or "; see: " in message) else \
        f"{message}; see: {program()} --help"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error line: one line and a working hint, not usage + error."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see: {self.prog} --help")


def show_warnings_as_lines() -> None:
    """Print Python warnings as one `warning: ...` line each (no source file and line): what a
    CLI shows when a run goes on despite a problem (e.g. a dropped federated client)."""
    import warnings

    warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}",
                                                          file=sys.stderr, flush=True)


def cli_main(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], None]:
    """Wrap a CLI `main(argv)`: UsageError → one line, exit 2; Ctrl-C → 'interrupted', exit 130."""

    def run(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except UsageError as err:
            fail(with_hint(str(err)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return run


# ---------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process umask (reading it means setting it; both calls are immediate)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain open(path, "w") would give a new file."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode a plain mkdir would give a new folder."""
    return 0o777 & ~_umask()


TEMP_MARK = re.compile(r"\.tmp-(\d+)-")  # in every temp name: ".<final>.tmp-<pid>-<random>"


def _temp_prefix(final: Path) -> str:
    # The writer's pid is in the name, so a later run can tell a killed writer's leftovers.
    return f".{final.name}.tmp-{os.getpid()}-"


def remove_stale_temps(final: str | Path) -> list[Path]:
    """Delete the temp files and folders that writers of `final` left behind when they were
    killed (their pid no longer runs). Every atomic write calls this first."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        match = TEMP_MARK.search(entry.name[len(final.name) + 1:])
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends without error the file there is
    flushed to disk, given the mode a normal write would have, and renamed onto `path`.
    Readers see the old file or the whole new one, never half. For writers that want a path
    (GGUF, matplotlib, PIL)."""
    final = Path(path)
    make_folder(final.parent)
    remove_stale_temps(final)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=_temp_prefix(final), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object file's content; {} when it is missing, unreadable or not an object (what
    a marker check wants: "is this file ours?" is a key lookup in the result)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def require_writable(target: str | Path) -> None:
    """Fail now, before any work, if `target` (a file or folder to be written) cannot be."""
    target = Path(target)
    existing = next(p for p in (target, *target.absolute().parents) if p.exists())
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{existing} is not writable, so {target} cannot be written; "
                         "choose another output folder")


def require_writable_file(target: str | Path) -> None:
    """require_writable for an output file (--json, a report): a folder there would fail the
    write only after all the work, with IsADirectoryError."""
    target = Path(target)
    if target.is_dir():
        raise UsageError(f"{target} is a folder; give a file name, e.g. {target / 'out.json'}")
    require_writable(target)


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{folder} exists and is not a folder") from None
    except PermissionError:
        raise UsageError(f"cannot create {folder}: permission denied") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{folder} is not writable; choose another output folder")


def normal_modes(folder: str | Path) -> None:
    """Give every file and folder under `folder` the mode a normal write would have. Libraries
    that write through mkstemp (transformers' safetensors, torch.onnx) leave files only their
    owner can read; a container running as another user could not load them."""
    files, folders = file_mode(), folder_mode()
    for root, _dirs, names in os.walk(folder):
        os.chmod(root, folders)
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, files)


def temp_dir_beside(final: str | Path) -> Path:
    """A new empty folder next to `final` (the same filesystem, so renaming it into place is
    atomic) with a normal folder's mode; what killed writers of `final` left is removed first."""
    final = Path(final)
    make_folder(final.parent)
    remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final)))
    os.chmod(tmp, folder_mode())
    return tmp


class AtomicDir:
    """Build a folder under a temporary name and rename it into place when complete.

        with AtomicDir(out) as tmp:  # write files into tmp
            ...
        # out now exists whole (mode as a normal mkdir); on an exception nothing at out changes.
    """

    def __init__(self, final: str | Path):
        self.final = Path(final)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = temp_dir_beside(self.final)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        normal_modes(self.tmp)
        old = None
        if self.final.exists():
            old = self.final.with_name(f"{_temp_prefix(self.final)}old")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_port_free(host: str, port: int, retry: str) -> None:
    """A one-line error now if the address is taken or not this machine's."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            s.bind((host, port))
    except OSError as err:
        reason = "is already in use" if err.errno == 98 else f"cannot be used ({err.strerror})"
        raise UsageError(f"{host}:{port} {reason}; pick another port; run: {retry}") from None


# ---------------------------------------------------------------------------- model folders

CONFIG = "config.json"


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors weights of a model folder (hub snapshots may be sharded)."""
    return sorted(Path(folder).glob("*.safetensors"))


def require_model(folder: str | Path, made_by: str) -> Path:
    """A model folder a previous stage finished (config.json that parses, safetensors weights),
    or a UsageError naming the command that makes it. The one check every stage, exporter,
    evaluation and the app use."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{path} does not exist; run: {made_by}")
    if not (path / CONFIG).is_file() or not weight_files(path):
        raise UsageError(f"{path} holds no finished model (config.json + *.safetensors); "
                         f"run: {made_by}")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path / CONFIG} is not valid JSON ({err}); run: {made_by}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UsageError(f"{path / CONFIG} names no model_type; run: {made_by}")
    return path


def made_by_hint(folder: str | Path) -> str:
    """The command that (re)builds a model folder: its recipe through the pipeline when it has
    one, else a fine-tune of the default base into it."""
    folder = Path(folder)
    if (folder / "recipe.yaml").is_file():
        return f"python -m training.pipeline --recipe {folder}"
    return f"python -m training.finetune --base models/tiny-base --out {folder}"


def weights_fingerprint(folder: str | Path) -> str:
    """sha256 over the folder's safetensors files (names and bytes): what every artifact
    derived from these weights records as `made_from`, so a stale one can be recognised."""
    digest = hashlib.sha256()
    for f in weight_files(folder):
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
