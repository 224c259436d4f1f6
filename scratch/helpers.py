"""What every scratch command shares: the error contract, the atomic writer, memory checks.

Import rule: this module imports only the standard library and numpy, and nothing else from
scratch, so every scratch module can import it without a cycle. (scratch as a whole never
imports training/, serving/ or torch.)

The error contract. Every bad input to a scratch command prints exactly one line on stderr,
    error: <what is wrong>; see: <a command that works, usually `python -m scratch.X --help`>
and exits with status 2, never with a traceback. `ArgumentParser` does this for argparse's own
errors; a command's `main(argv)` raises `UsageError` for the rest, and its entry point runs it
through `cli_main(main, prog)`, which prints the line (Ctrl-C prints `interrupted`, exit 130).

The atomic writer. Every file a scratch command writes goes through `atomic_open` (or the
`write_*` / `save_*` functions built on it): the data goes to a temp file in the target's folder,
is fsynced, and replaces the target with `os.replace`, so a reader never sees half a file and an
interrupted run leaves the old file intact. The file gets the mode a plain `open(path, "w")`
would give (0o666 minus the umask, so 0644 under umask 022), not mkstemp's private 0600.
`write_folder` does the same for a whole folder of files (a model folder).

Memory checks. `check_memory(nbytes, what)` refuses a request that cannot fit before anything
is allocated, saying how much it would need, instead of a MemoryError traceback or minutes of
swapping.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np

# ---------------------------------------------------------------- the error contract


class UsageError(Exception):
    """Bad input to a command: `cli_main` prints `error: <message>; see: <hint>`, exits 2.

    hint is a command that helps (default: the program's --help)."""

    def __init__(self, message: object, hint: str | None = None) -> None:
        super().__init__(str(message))
        self.hint = hint


def error_line(message: object, hint: str) -> str:
    """The contract's one line (newlines inside the message are folded into spaces)."""
    text = " ".join(str(message).split()) or "bad input"
    return f"error: {text}; see: {hint}"


def fail(message: object, hint: str) -> NoReturn:
    """Print the one error line on stderr and exit with status 2."""
    print(error_line(message, hint), file=sys.stderr, flush=True)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the contract's one-line errors (argparse prints usage + error: two lines).

    prog is the command as typed, e.g. "python -m scratch.life"; the hint is `<prog> --help`."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        fail(message, f"{self.prog} --help")


def cli_main(
    main: Callable[[list[str] | None], int | None], prog: str, argv: list[str] | None = None
) -> NoReturn:
    """Run a command's main(argv) under the error contract and exit with its status.

    UsageError -> one line, exit 2; MemoryError or an OSError (a path that cannot be read or
    written) -> one line, exit 2; KeyboardInterrupt -> `interrupted`, exit 130."""
    hint = f"{prog} --help"
    try:
        status = main(argv)
    except UsageError as error:
        fail(error, error.hint or hint)
    except MemoryError:
        fail("out of memory; try a smaller size", hint)
    except OSError as error:
        fail(_describe_os_error(error), hint)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    raise SystemExit(status or 0)


def show_warnings_as_lines() -> None:
    """Print Python warnings as one `warning: ...` line each (no file and line of the source):
    what a CLI shows when a run goes on despite a problem (e.g. a dropped federated client)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def _describe_os_error(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (high None: no upper bound). A bad value is
    argparse's own one-line error ("argument --size: must be an integer >= 1, got 'x'")."""
    expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------- the atomic writer

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (/proc on Linux);
    elsewhere set-and-restore under a lock (os.umask has no read-only form)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (not possible on every OS/filesystem: best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on a clean exit it is fsynced, given the
    mode a plain write would get (0o666 & ~umask) and renamed over `path`. On an exception the
    temp file is removed and `path` is untouched. Missing parent folders are created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 1) -> Path:
    """JSON with a trailing newline."""
    return write_text(path, json.dumps(payload, indent=indent) + "\n")


def write_folder(path: str | os.PathLike, files: dict[str, bytes | str]) -> Path:
    """A whole folder of files (name -> bytes, or text as UTF-8), replacing `path` as one unit:
    built in a hidden staging folder beside it, each file through the atomic writer, then moved
    into place by a rename, so a reader sees the old folder or the new one, never a mix. An
    older folder at `path` is replaced whole, with anything else it held (derived files would
    be stale). The folder gets the mode a plain mkdir would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", str(path))
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = None
    try:
        os.chmod(stage, 0o777 & ~current_umask())
        for name, data in files.items():
            if isinstance(data, str):
                write_text(stage / name, data)
            else:
                write_bytes(stage / name, data)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent)) / "folder"
            os.replace(path, old)
        try:
            os.replace(stage, path)
        except OSError:
            if old is not None:  # put the old folder back
                os.replace(old, path)
                old = None
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    _fsync_folder(path.parent)
    return path


def save_npz(path: str | os.PathLike, compressed: bool = False, **arrays: np.ndarray) -> Path:
    """np.savez(_compressed) to exactly `path` (np.savez given a name would append '.npz')."""
    with atomic_open(path, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure, in the format its suffix names (.png when it has none)."""
    savefig_kwargs.setdefault("format", Path(path).suffix.lstrip(".").lower() or "png")
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, **savefig_kwargs)
    return Path(path)


def save_gif(path: str | os.PathLike, images: Sequence[Any], duration_ms: int = 80,
             **save_kwargs: Any) -> Path:
    """PIL images as one animated GIF that loops forever."""
    if not images:
        raise ValueError("a GIF needs at least one frame")
    with atomic_open(path, "wb") as handle:
        images[0].save(handle, format="GIF", save_all=True, append_images=list(images[1:]),
                       duration=duration_ms, loop=0, **save_kwargs)
    return Path(path)


# ---------------------------------------------------------------- memory checks


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes this process can expect to allocate: the kernel's MemAvailable (physical memory
    without swap when that is not readable), capped by a cgroup v2 limit when one is set."""
    available = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            available = 1 << 62  # unknown: only absurd requests are refused
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit))
    return available


def check_memory(nbytes: float, what: str) -> None:
    """ValueError naming `what` and the bytes it needs when that exceeds available_memory().

    Call it with an estimate of the peak before allocating anything big; the message reads
    "<what> needs 7.3 TiB of memory; this machine has 21.9 GiB available"."""
    available = available_memory()
    if nbytes > available:
        raise ValueError(
            f"{what} needs {format_bytes(nbytes)} of memory; "
            f"this machine has {format_bytes(available)} available"
        )
