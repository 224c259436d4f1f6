"""The BFF primordial soup (Agüera y Arcas et al. 2024, "Computational Life"), cubff's bff_noheads.

A soup of 64-byte programs. Each epoch the programs are paired at random; each pair is
concatenated into one 128-byte tape that is code and data at once, run for at most 8192 steps,
and split back. Bytes are mutated at random (1/4096 per byte per epoch). Out of random bytes,
self-replicators can appear and take over: the soup's high-order entropy (Shannon entropy of
the bytes minus brotli's compressed bits per byte) jumps when they do.

Instructions (any other byte is a no-op that still costs a step):
  <  >   head0 -= 1, += 1        {  }   head1 -= 1, += 1      (heads wrap mod 128)
  -  +   tape[head0] -= 1, += 1  .  ,   tape[head1] = tape[head0],  tape[head0] = tape[head1]
  [      if tape[head0] == 0: jump past the matching ]   (no match: halt)
  ]      if tape[head0] != 0: jump back past the matching [   (no match: halt)
pc, head0 and head1 start at 0; the run ends when pc leaves the tape.

CLI: python -m scratch.soup --programs 131072 --epochs 16384 --seed 0 --json out.json --plot p.png
(also python -m scratch.ca.soup)
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import brotli
import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

from scratch import helpers
from scratch.ca.display import progress

PROGRAM_SIZE = 64
TAPE_SIZE = 2 * PROGRAM_SIZE
MAX_STEPS = 8192
MUTATION_RATE = 1 / 4096
# High-order entropy above this (bits per byte) means the soup has become structured; random
# soups sit near 0 and post-transition soups well above 1 (the paper's figures reach ~3-6).
TRANSITION_THRESHOLD = 1.0
# The entropy is measured on at most this many programs (1 MiB), every k-th of the soup. brotli
# needs ~160 ms for a whole 2^17-program soup (8 MiB) - more than ten epochs of the soup itself -
# and ~10-20 ms for 1 MiB. Pairing is random every epoch, so a strided sample of 16384 programs
# holds the same mix of replicators as the whole soup: on structured data the sample's value is
# within ~0.01-0.3 bits/byte of the whole's, far from the transition threshold's margin.
ENTROPY_SAMPLE_PROGRAMS = 1 << 14

# Opcodes: a 256-entry table maps each byte to one small integer so the interpreter dispatches
# on a dense range (0 = no-op).
NOOP, DEC0, INC0, DEC1, INC1, MINUS, PLUS, COPY01, COPY10, OPEN, CLOSE = range(11)
OPCODE = np.zeros(256, dtype=np.uint8)
for _char, _op in zip("<>{}-+.,[]", range(1, 11), strict=True):
    OPCODE[ord(_char)] = _op


# ---------------------------------------------------------------- interpreter


@njit(cache=True, inline="always")
def _next_code(lo, hi, p):
    """Smallest position >= p holding an instruction (bitmaps lo: 0..63, hi: 64..127), or 128."""
    if p < 64:
        m = lo >> np.uint64(p)
        if m:
            return p + trailing_zeros(m)
        p = 64
    if p < 128:
        m = hi >> np.uint64(p - 64)
        if m:
            return p + trailing_zeros(m)
    return 128


@njit(cache=True, inline="always")
def _prev_code(lo, hi, p):
    """Largest position <= p holding an instruction, or -1."""
    if p >= 64:
        m = hi << np.uint64(127 - p)
        if m:
            return p - leading_zeros(m)
        p = 63
    if p >= 0:
        m = lo << np.uint64(63 - p)
        if m:
            return p - leading_zeros(m)
    return -1


@njit(cache=True, inline="always")
def _mark(lo, hi, pos, value, opcode):
    """Bitmaps after tape[pos] = value."""
    one = np.uint64(1)
    if pos < 64:
        bit = one << np.uint64(pos)
        lo = (lo | bit) if opcode[value] else (lo & ~bit)
    else:
        bit = one << np.uint64(pos - 64)
        hi = (hi | bit) if opcode[value] else (hi & ~bit)
    return lo, hi


@njit(cache=True)
def _run_tape(tape, lo, hi, max_steps, opcode, snapshot):
    """Run one 128-byte tape in place; return (executed positions (steps), lo, hi), where lo
    and hi are the instruction bitmaps of the tape's two halves (see below), given for the tape
    as it starts and returned for the tape as it ends.

    Speed trick, exact: cycle detection. A run that has not halted is a deterministic walk
    through states (pc, head0, head1, tape). At taken `]` jumps we keep a snapshot of the state
    (re-taken after 1, 2, 4, ... jumps: Brent's algorithm, so cycles of any length are caught).
    When the state comes back, the run is periodic and can never halt: only the position in the
    cycle at the step limit matters, so we run (steps left) mod (period) more steps and report
    max_steps. `snapshot` is a 128-byte scratch buffer for the saved tape.

    Second trick: two 64-bit bitmaps mark which positions hold instructions (kept up to date on
    every write), so runs of no-op bytes are skipped in one step-count addition and bracket
    scans hop from instruction to instruction. The soup keeps each program's bitmap between
    epochs (the bitmaps a run ends with are its two programs' new ones), so a tape starts with
    two loads instead of a 128-byte scan - most tapes of a young soup halt within a few steps,
    and the scan was a third of an epoch.
    """
    pc = 0
    head0 = 0
    head1 = 0
    steps = 0
    limit = max_steps
    detecting = True
    snap_pc = -1
    snap_head0 = 0
    snap_head1 = 0
    snap_steps = 0
    jumps_since_snap = 0
    snap_interval = 1
    changed = False  # any byte changed value since the snapshot
    while steps < limit:
        op = opcode[tape[pc]]
        if op == NOOP:
            # Skip to the next instruction: each no-op position still costs a step.
            gap = _next_code(lo, hi, pc) - pc
            if steps + gap >= limit:
                steps = limit
                break
            steps += gap
            pc += gap
            if pc >= TAPE_SIZE:
                break
            continue
        elif op == DEC0:
            head0 = (head0 - 1) & 127
        elif op == INC0:
            head0 = (head0 + 1) & 127
        elif op == DEC1:
            head1 = (head1 - 1) & 127
        elif op == INC1:
            head1 = (head1 + 1) & 127
        elif op == MINUS:
            tape[head0] -= 1
            lo, hi = _mark(lo, hi, head0, tape[head0], opcode)
            changed = True
        elif op == PLUS:
            tape[head0] += 1
            lo, hi = _mark(lo, hi, head0, tape[head0], opcode)
            changed = True
        elif op == COPY01:
            if tape[head1] != tape[head0]:
                tape[head1] = tape[head0]
                lo, hi = _mark(lo, hi, head1, tape[head1], opcode)
                changed = True
        elif op == COPY10:
            if tape[head0] != tape[head1]:
                tape[head0] = tape[head1]
                lo, hi = _mark(lo, hi, head0, tape[head0], opcode)
                changed = True
        elif op == OPEN:
            if tape[head0] == 0:
                depth = 1
                pos = _next_code(lo, hi, pc + 1)
                while pos < TAPE_SIZE:
                    o = opcode[tape[pos]]
                    if o == CLOSE:
                        depth -= 1
                        if depth == 0:
                            break
                    elif o == OPEN:
                        depth += 1
                    pos = _next_code(lo, hi, pos + 1)
                if depth != 0:  # unmatched: halt
                    return steps + 1, lo, hi
                pc = pos
        else:  # CLOSE
            if tape[head0] != 0:
                depth = 1
                pos = _prev_code(lo, hi, pc - 1)
                while pos >= 0:
                    o = opcode[tape[pos]]
                    if o == OPEN:
                        depth -= 1
                        if depth == 0:
                            break
                    elif o == CLOSE:
                        depth += 1
                    pos = _prev_code(lo, hi, pos - 1)
                if depth != 0:  # unmatched: halt
                    return steps + 1, lo, hi
                if detecting:
                    if (pc == snap_pc and head0 == snap_head0 and head1 == snap_head1
                            and (not changed or _same_tape(tape, snapshot, head0, head1))):
                        if not changed:  # a cycle that writes nothing: the tape is final
                            return max_steps, lo, hi
                        limit = steps + (max_steps - steps) % (steps - snap_steps)
                        detecting = False
                        if steps >= limit:
                            return max_steps, lo, hi
                    else:
                        jumps_since_snap += 1
                        if jumps_since_snap >= snap_interval:
                            snap_pc, snap_head0, snap_head1, snap_steps = pc, head0, head1, steps
                            snapshot[:] = tape
                            changed = False
                            jumps_since_snap, snap_interval = 0, 2 * snap_interval
                pc = pos
        steps += 1
        pc += 1
        if pc >= TAPE_SIZE:
            break
    return (steps if detecting else max_steps), lo, hi


@njit(cache=True)
def _code_bitmap(program, opcode):
    """Bit i set where program[i] (64 bytes) is an instruction."""
    bits = np.uint64(0)
    for i in range(PROGRAM_SIZE):
        bits |= np.uint64(opcode[program[i]] != 0) << np.uint64(i)
    return bits


@njit(parallel=True, cache=True)
def _code_bitmaps(programs, opcode):
    out = np.empty(len(programs), dtype=np.uint64)
    for p in prange(len(programs)):
        out[p] = _code_bitmap(programs[p], opcode)
    return out


@njit(cache=True)
def _same_tape(tape, snapshot, head0, head1):
    # The bytes under the heads are the likeliest to differ: check them first.
    if tape[head0] != snapshot[head0] or tape[head1] != snapshot[head1]:
        return False
    for i in range(TAPE_SIZE):
        if tape[i] != snapshot[i]:
            return False
    return True


def run_tape(tape: bytes, max_steps: int = MAX_STEPS) -> tuple[bytes, int]:
    """Run one interaction on a 128-byte tape; return (final tape, steps taken)."""
    if len(tape) != TAPE_SIZE:
        raise ValueError(f"tape must be {TAPE_SIZE} bytes, got {len(tape)}")
    work = np.frombuffer(bytes(tape), dtype=np.uint8).copy()
    lo, hi = _code_bitmaps(work.reshape(2, PROGRAM_SIZE), OPCODE)
    steps, _, _ = _run_tape(work, lo, hi, max_steps, OPCODE, np.empty(TAPE_SIZE, dtype=np.uint8))
    return work.tobytes(), int(steps)


@njit(parallel=True, cache=True)
def _interact(programs, codes, order, max_steps, opcode):
    """Run every pair (order[2i], order[2i+1]) as one tape; returns total steps. codes holds
    each program's instruction bitmap and is kept up to date."""
    n_pairs = order.size // 2
    n_chunks = min(n_pairs, 256)  # one scratch tape per chunk, not per pair
    totals = np.zeros(n_chunks, dtype=np.int64)
    for chunk in prange(n_chunks):
        tape = np.empty(TAPE_SIZE, dtype=np.uint8)
        snapshot = np.empty(TAPE_SIZE, dtype=np.uint8)
        total = 0
        for pair in range(chunk * n_pairs // n_chunks, (chunk + 1) * n_pairs // n_chunks):
            a, b = order[2 * pair], order[2 * pair + 1]
            # Byte loops, not slice assignment: numba's slice copies cost ~30x more here, and
            # with most tapes of a young soup halting after a few steps, copying was most of
            # an epoch.
            for i in range(PROGRAM_SIZE):
                tape[i] = programs[a, i]
                tape[PROGRAM_SIZE + i] = programs[b, i]
            steps, codes[a], codes[b] = _run_tape(tape, codes[a], codes[b], max_steps, opcode,
                                                  snapshot)
            total += steps
            for i in range(PROGRAM_SIZE):
                programs[a, i] = tape[i]
                programs[b, i] = tape[PROGRAM_SIZE + i]
        totals[chunk] = total
    return totals.sum()


# ---------------------------------------------------------------- measurements


def high_order_entropy(data: np.ndarray) -> float:
    """Shannon entropy of the byte histogram minus brotli's bits per byte (the paper's measure;
    brotli quality 2, window 2^24 as in cubff)."""
    raw = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / len(raw)
    shannon = float(-(p * np.log2(p)).sum())
    compressed_bits = 8 * len(brotli.compress(raw, quality=2, lgwin=24))
    return shannon - compressed_bits / len(raw)


def show_program(program: bytes | np.ndarray) -> str:
    """Instructions as themselves, zero bytes as '0', every other byte as '·'."""
    chars = []
    for byte in bytes(program):
        chars.append(chr(byte) if OPCODE[byte] else ("0" if byte == 0 else "·"))
    return "".join(chars)


# ---------------------------------------------------------------- soup


class Soup:
    """A soup of programs with its random state, so a run can be saved and resumed exactly.

    `programs` is read-only: the soup keeps each program's instruction bitmap beside it, so
    programs are changed through `write` (which updates both)."""

    def __init__(self, n_programs: int, seed: int, mutation_rate: float = MUTATION_RATE) -> None:
        if n_programs < 2 or n_programs % 2:
            raise ValueError("the number of programs must be even and >= 2")
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._set_programs(self.rng.integers(0, 256, (n_programs, PROGRAM_SIZE), dtype=np.uint8))
        self.mutation_rate = mutation_rate
        self.epoch = 0
        self.entropy: list[tuple[int, float]] = []
        self.total_steps = 0

    def _set_programs(self, programs: np.ndarray) -> None:
        self._programs = np.ascontiguousarray(programs, dtype=np.uint8)
        self._codes = _code_bitmaps(self._programs, OPCODE)

    @property
    def programs(self) -> np.ndarray:
        """The programs, (n, 64) bytes, as a read-only view."""
        view = self._programs.view()
        view.flags.writeable = False
        return view

    def write(self, rows, values) -> None:
        """programs[rows] = values (rows: anything numpy indexes rows with)."""
        self._programs[rows] = values
        changed = np.atleast_1d(np.arange(len(self._programs))[rows])
        self._codes[changed] = _code_bitmaps(self._programs[changed].reshape(-1, PROGRAM_SIZE),
                                             OPCODE)

    def run_epoch(self) -> None:
        """Mutate, pair at random, interact (cubff mutates each tape just before running it;
        mutating the soup first is the same distribution)."""
        flat = self._programs.reshape(-1)
        n_mutations = self.rng.binomial(flat.size, self.mutation_rate)
        where = self.rng.integers(0, flat.size, n_mutations)
        flat[where] = self.rng.integers(0, 256, n_mutations, dtype=np.uint8)
        mutated = np.unique(where // PROGRAM_SIZE)
        self._codes[mutated] = _code_bitmaps(self._programs[mutated], OPCODE)
        order = self.rng.permutation(len(self._programs)).astype(np.int64)
        self.total_steps += int(_interact(self._programs, self._codes, order, MAX_STEPS, OPCODE))
        self.epoch += 1

    def entropy_sample(self) -> np.ndarray:
        """The programs the entropy is measured on: all of them, or every k-th when there are
        more than ENTROPY_SAMPLE_PROGRAMS."""
        step = -(-len(self.programs) // ENTROPY_SAMPLE_PROGRAMS)
        return self.programs[::step]

    def measure(self) -> float:
        value = high_order_entropy(self.entropy_sample())
        self.entropy.append((self.epoch, value))
        return value

    @property
    def transition_epoch(self) -> int | None:
        """First sampled epoch with high-order entropy above the threshold."""
        return next((e for e, h in self.entropy if h >= TRANSITION_THRESHOLD), None)

    def top_programs(self, k: int = 10) -> list[tuple[bytes, int]]:
        """The k most common programs (after a transition: the replicators) with their counts."""
        rows = np.ascontiguousarray(self.programs).view(f"V{PROGRAM_SIZE}").ravel()
        values, counts = np.unique(rows, return_counts=True)
        best = np.argsort(-counts, kind="stable")[:k]
        return [(values[i].tobytes(), int(counts[i])) for i in best]

    def save(self, path: Path) -> None:
        meta = {
            "epoch": self.epoch,
            "mutation_rate": self.mutation_rate,
            "entropy": self.entropy,
            "total_steps": self.total_steps,
            "rng": self.rng.bit_generator.state,
        }
        helpers.save_npz(path, compressed=True, programs=self.programs,
                         meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> Soup:
        with np.load(Path(path)) as data:
            programs = data["programs"]
            meta = json.loads(str(data["meta"]))
        if programs.ndim != 2 or programs.shape[1] != PROGRAM_SIZE or len(programs) % 2:
            raise ValueError(f"{path}: programs of shape {programs.shape}, expected (even n, 64)")
        soup = cls.__new__(cls)
        soup._set_programs(programs)
        soup.rng = np.random.Generator(np.random.PCG64())
        soup.rng.bit_generator.state = meta["rng"]
        soup.mutation_rate = meta["mutation_rate"]
        soup.epoch = meta["epoch"]
        soup.entropy = [(int(e), float(h)) for e, h in meta["entropy"]]
        soup.total_steps = meta["total_steps"]
        return soup


def plot_entropy(soup: Soup, path: Path, title: str = "") -> None:
    """High-order entropy over epochs, with the transition marked."""
    import matplotlib  # ~1.5 s to import: only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, values = zip(*soup.entropy, strict=True) if soup.entropy else ((), ())
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    ax.plot(epochs, values, lw=1.5)
    if soup.transition_epoch is not None:
        ax.axvline(soup.transition_epoch, color="C3", ls="--", lw=1, label="transition")
        ax.legend(loc="upper left")
    ax.set_xlabel("epoch")
    ax.set_ylabel("high-order entropy (bits/byte)")
    ax.set_title(title or f"BFF soup, {len(soup.programs)} programs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        helpers.save_figure(fig, path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- CLI


PROG = "python -m scratch.soup"


def default_entropy_every(epochs: int) -> int:
    """Epochs between entropy samples: about 128 samples per run, but at least 16 epochs apart
    (a sample, ~10-20 ms, then costs under ~5% of the soup's time at 2^17 programs) and at
    most 128 (a transition takes hundreds of epochs to fill the soup, so none is missed)."""
    return max(16, min(128, epochs // 128))


def soup_bytes(n_programs: int) -> int:
    """Peak memory of a soup run: the programs (64 bytes each), the entropy sample's copy and
    brotli's work (~2x the sample), the pairing order (8 bytes each), top_programs' sort."""
    return n_programs * (4 * PROGRAM_SIZE + 16) + (64 << 20)


def main(argv: list[str] | None = None) -> int:
    parser = helpers.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--programs", type=helpers.int_range(2), default=1 << 17,
                        help="soup size (even; default 131072)")
    parser.add_argument("--epochs", type=helpers.int_range(0), required=True,
                        help="run until this epoch")
    parser.add_argument("--seed", type=helpers.int_range(0), default=0)
    parser.add_argument("--json", type=Path, required=True, help="write the run summary here")
    parser.add_argument("--plot", type=Path, help="PNG of high-order entropy over epochs")
    parser.add_argument("--entropy-every", type=helpers.int_range(0), default=0,
                        help="epochs between entropy samples (0: about 128 samples, from 16 "
                        "to 128 epochs apart)")
    parser.add_argument("--save", type=Path, help="save the soup here at the end (resumable)")
    parser.add_argument("--resume", type=Path, help="continue a soup saved with --save")
    parser.add_argument("--seed-program", help="hex of a program to plant in 1%% of the soup")
    parser.add_argument("--top", type=helpers.int_range(0), default=5,
                        help="print the most common programs")
    parser.add_argument("--stop-at-transition", action="store_true")
    args = parser.parse_args(argv)

    try:
        if args.resume:
            try:
                soup = Soup.load(args.resume)
            except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                raise ValueError(f"{args.resume}: not a soup saved with --save "
                                 f"({type(error).__name__})") from None
        else:
            helpers.check_memory(soup_bytes(args.programs), f"--programs {args.programs}")
            soup = Soup(args.programs, args.seed)
        if args.seed_program:
            try:
                program = bytes.fromhex(args.seed_program)
            except ValueError:
                raise ValueError("--seed-program must be hexadecimal digits") from None
            if len(program) != PROGRAM_SIZE:
                raise ValueError(f"--seed-program must be {PROGRAM_SIZE} bytes "
                                 f"({2 * PROGRAM_SIZE} hex digits), got {len(program)}")
            soup.write(slice(0, max(1, len(soup.programs) // 100)),
                       np.frombuffer(program, dtype=np.uint8))
    except ValueError as error:
        raise helpers.UsageError(error) from None

    every = args.entropy_every or default_entropy_every(args.epochs)
    if not soup.entropy:
        soup.measure()
    start_epoch, started = soup.epoch, time.perf_counter()
    for _ in progress(range(soup.epoch, args.epochs), "soup"):
        soup.run_epoch()
        if soup.epoch % every == 0 or soup.epoch == args.epochs:
            soup.measure()
            if args.stop_at_transition and soup.transition_epoch is not None:
                break
    elapsed = time.perf_counter() - started
    run_epochs = soup.epoch - start_epoch

    helpers.write_json(args.json, {
        "epochs": soup.epoch,
        "transition_epoch": soup.transition_epoch,
        "entropy": [[e, round(h, 6)] for e, h in soup.entropy],
        "epochs_per_second": run_epochs / elapsed if elapsed > 0 else 0.0,
    }, indent=None)
    if args.save:
        soup.save(args.save)
    if args.plot:
        plot_entropy(soup, args.plot)
    print(f"epoch {soup.epoch}: high-order entropy {soup.entropy[-1][1]:.3f}, "
          f"transition {soup.transition_epoch}, {run_epochs / max(elapsed, 1e-9):.1f} epochs/s")
    if soup.transition_epoch is not None and args.top:
        print("most common programs:")
        for program, count in soup.top_programs(args.top):
            print(f"  {count:7d}  {show_program(program)}")
    return 0


if __name__ == "__main__":
    helpers.cli_main(main, PROG)
