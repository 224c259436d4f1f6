"""BFF soup: the fast interpreter against a pure-Python reference, hand-made tapes, a seeded
replicator taking over, save/resume, and the CLI's JSON."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scratch.ca.soup import (
    ENTROPY_SAMPLE_PROGRAMS,
    MAX_STEPS,
    OPCODE,
    TRANSITION_THRESHOLD,
    Soup,
    _code_bitmaps,
    default_entropy_every,
    high_order_entropy,
    run_tape,
    show_program,
)

# A palindromic replicator: run first on a tape it copies itself, reversed, into the other half
# ('{' walks head1 down from 127 while '>' walks head0 up from 0); being a palindrome, the
# reversed copy is itself. The 0x01 filler keeps the copy loop running to the end.
REPLICATOR = b"[[{.>]-]" + b"\x01" * 48 + b"]-]>.{[["


def reference_run_tape(tape: bytes, max_steps: int = MAX_STEPS) -> tuple[bytes, int]:
    """cubff's bff_noheads Evaluate loop, written plainly: one executed position per step."""
    t = bytearray(tape)
    pc = head0 = head1 = 0
    steps = 0
    while steps < max_steps:
        c = chr(t[pc])
        if c == "<":
            head0 = (head0 - 1) % 128
        elif c == ">":
            head0 = (head0 + 1) % 128
        elif c == "{":
            head1 = (head1 - 1) % 128
        elif c == "}":
            head1 = (head1 + 1) % 128
        elif c == "-":
            t[head0] = (t[head0] - 1) % 256
        elif c == "+":
            t[head0] = (t[head0] + 1) % 256
        elif c == ".":
            t[head1] = t[head0]
        elif c == ",":
            t[head0] = t[head1]
        elif c == "[" and t[head0] == 0:  # forward to the matching ]
            depth = 1
            while depth and pc < 127:
                pc += 1
                depth += (t[pc] == ord("[")) - (t[pc] == ord("]"))
            if depth:
                return bytes(t), steps + 1
        elif c == "]" and t[head0] != 0:  # back to the matching [
            depth = 1
            while depth and pc > 0:
                pc -= 1
                depth += (t[pc] == ord("]")) - (t[pc] == ord("["))
            if depth:
                return bytes(t), steps + 1
        steps += 1
        pc += 1
        if pc >= 128:
            break
    return bytes(t), steps


def random_tapes(n: int, seed: int):
    """Uniform random bytes (like a fresh soup) and instruction-dense tapes (loops, writes,
    cycles with and without writes) in equal parts."""
    rng = np.random.default_rng(seed)
    dense_alphabet = np.frombuffer(b"<>{}-+.,[][]\x00\x01", dtype=np.uint8)
    for i in range(n):
        if i % 2:
            yield rng.integers(0, 256, 128, dtype=np.uint8).tobytes()
        else:
            yield rng.choice(dense_alphabet, 128).tobytes()


def test_fast_interpreter_is_byte_identical_to_reference():
    rng = np.random.default_rng(7)
    for tape in random_tapes(3000, seed=1):
        max_steps = MAX_STEPS if rng.random() < 0.7 else int(rng.integers(1, 3000))
        assert run_tape(tape, max_steps) == reference_run_tape(tape, max_steps), tape.hex()


def test_hand_made_tapes():
    zeros = bytes(128)
    assert run_tape(zeros) == (zeros, 128)  # no-ops still cost a step each
    # '+' at 0 increments itself (head0 = 0) into ',' (44).
    assert run_tape(b"+" + bytes(127)) == (b"," + bytes(127), 128)
    # ']' with tape[head0] = ']' != 0 and no '[' before it: halts after one step.
    assert run_tape(b"]" + bytes(127)) == (b"]" + bytes(127), 1)
    # head0 wraps to 127 (a zero byte), so '[' jumps forward, finds no ']', halts.
    assert run_tape(b"<[" + bytes(126)) == (b"<[" + bytes(126), 2)
    # '{' wraps head1 to 127, '.' copies tape[head0 = 0] there.
    assert run_tape(b"{." + bytes(126)) == (b"{." + bytes(125) + b"{", 128)
    # ',' copies tape[head1] into tape[head0]: head0 = 1, head1 = 0, so tape[1] = '>'.
    assert run_tape(b">," + bytes(126))[0][:2] == b">>"
    # '[]' on a non-zero cell loops forever: the step limit ends it, tape untouched.
    assert run_tape(b"[]" + bytes(126)) == (b"[]" + bytes(126), MAX_STEPS)
    assert run_tape(b"[]" + bytes(126), max_steps=11) == (b"[]" + bytes(126), 11)
    # A counting loop: head0 sits on tape[0] = 3 (a no-op as code); '[-]' counts it down to 0.
    tape = b"\x03[-]" + bytes(124)
    final, steps = run_tape(tape)
    # [ runs once; - ] thrice
    assert final == bytes(4 - 3) + b"[-]" + bytes(124) and steps == 1 + 1 + 2 * 3 + 124
    with pytest.raises(ValueError):
        run_tape(b"short")


def test_replicator_copies_itself():
    rng = np.random.default_rng(0)
    for _ in range(20):
        partner = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        final, _ = run_tape(REPLICATOR + partner)
        assert final == REPLICATOR + REPLICATOR


def test_epoch_matches_reference_pairing():
    soup = Soup(64, seed=5)
    before = soup.programs.copy()
    rng_copy = np.random.Generator(np.random.PCG64())
    rng_copy.bit_generator.state = soup.rng.bit_generator.state
    soup.mutation_rate = 0.0
    soup.run_epoch()
    rng_copy.binomial(before.size, 0.0)
    rng_copy.integers(0, before.size, 0)
    rng_copy.integers(0, 256, 0, dtype=np.uint8)
    order = rng_copy.permutation(64)
    expected = before.copy()
    for a, b in zip(order[::2], order[1::2], strict=True):
        tape, _ = reference_run_tape(before[a].tobytes() + before[b].tobytes())
        expected[a] = np.frombuffer(tape[:64], np.uint8)
        expected[b] = np.frombuffer(tape[64:], np.uint8)
    assert (soup.programs == expected).all()


def test_the_kept_instruction_bitmaps_match_the_programs_after_epochs_and_writes():
    soup = Soup(2048, seed=4, mutation_rate=0.0)
    soup.write(slice(0, 100), np.frombuffer(REPLICATOR, dtype=np.uint8))  # copies itself
    soup.write(7, np.zeros(64, dtype=np.uint8))
    assert (soup._codes == _code_bitmaps(soup.programs, OPCODE)).all()
    before = soup.programs.copy()
    soup.run_epoch()
    assert (soup.programs != before).sum() > 1000  # the runs rewrote many bytes
    soup.mutation_rate = 1 / 256  # and now many mutations per epoch
    for _ in range(10):
        soup.run_epoch()
        assert (soup._codes == _code_bitmaps(soup.programs, OPCODE)).all()
    with pytest.raises(ValueError):
        soup.programs[0, 0] = 1  # read-only: changes go through write()


def test_seeded_replicator_takes_over_and_is_detected():
    soup = Soup(4096, seed=3)
    soup.write(slice(0, 41), np.frombuffer(REPLICATOR, dtype=np.uint8))  # 1% of the soup
    soup.measure()
    for _ in range(40):
        soup.run_epoch()
        if soup.epoch % 5 == 0:
            soup.measure()
    assert soup.entropy[0][1] < 0.5 < 2.0 < soup.entropy[-1][1]
    assert soup.transition_epoch is not None and 10 <= soup.transition_epoch <= 40
    top_program, count = soup.top_programs(1)[0]
    assert top_program == REPLICATOR and count > 100
    assert show_program(top_program).startswith("[[{.>]-]··")


def test_a_big_soup_is_measured_on_a_strided_sample_that_agrees_with_the_whole():
    small, big = Soup(4096, seed=0), Soup(4 * ENTROPY_SAMPLE_PROGRAMS, seed=0)
    assert (small.entropy_sample() == small.programs).all()
    sample = big.entropy_sample()
    assert len(sample) == ENTROPY_SAMPLE_PROGRAMS and (sample == big.programs[::4]).all()
    # Random, then a third, then two thirds of the soup copies of one replicator (at random
    # places, as takeover leaves them), the rest random bytes: the sample tracks the whole.
    rng = np.random.default_rng(1)
    values = []
    for share in (0.0, 1 / 3, 2 / 3):
        big.write(rng.random(len(big.programs)) < share, np.frombuffer(REPLICATOR, np.uint8))
        whole, measured = high_order_entropy(big.programs), big.measure()
        assert abs(whole - measured) < 0.3, (share, whole, measured)
        values.append(measured)
    assert values[0] < 0.1 < TRANSITION_THRESHOLD < values[1] < values[2]
    assert big.transition_epoch == 0  # the entropy log has the sample's values


def test_default_entropy_schedule_is_16_to_128_epochs_apart():
    assert [default_entropy_every(e) for e in (1, 512, 2048, 4096, 16384, 10**6)] == [
        16, 16, 16, 32, 128, 128]


def test_high_order_entropy_separates_noise_from_structure():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    repeated = np.tile(rng.integers(0, 256, 64, dtype=np.uint8), 1024)
    assert abs(high_order_entropy(noise)) < 0.1
    assert high_order_entropy(repeated) > 5


def test_save_and_resume_give_the_same_soup(tmp_path):
    straight = Soup(256, seed=11)
    for _ in range(6):
        straight.run_epoch()
    straight.measure()
    halves = Soup(256, seed=11)
    for _ in range(3):
        halves.run_epoch()
    halves.save(tmp_path / "soup.npz")
    resumed = Soup.load(tmp_path / "soup.npz")
    for _ in range(3):
        resumed.run_epoch()
    resumed.measure()
    assert resumed.epoch == 6 and (resumed.programs == straight.programs).all()
    assert resumed.entropy == straight.entropy


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "scratch.soup", *args], capture_output=True,
                          text=True)


def test_cli_json_schema_plot_and_resume(tmp_path):
    out, plot, saved = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "s.npz"
    result = _cli("--programs", "512", "--epochs", "8", "--seed", "2", "--json", str(out),
                  "--plot", str(plot), "--entropy-every", "2", "--save", str(saved))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert set(summary) == {"epochs", "transition_epoch", "entropy", "epochs_per_second"}
    assert summary["epochs"] == 8 and summary["transition_epoch"] is None
    assert [e for e, _ in summary["entropy"]] == [0, 2, 4, 6, 8]
    assert isinstance(summary["epochs_per_second"], float)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    result = _cli("--epochs", "10", "--json", str(out), "--resume", str(saved),
                  "--entropy-every", "2")
    assert result.returncode == 0, result.stderr
    assert [e for e, _ in json.loads(out.read_text())["entropy"]] == [0, 2, 4, 6, 8, 10]
    result = _cli("--epochs", "40", "--json", str(out), "--resume", str(saved))  # the default
    assert result.returncode == 0, result.stderr
    epochs = [e for e, _ in json.loads(out.read_text())["entropy"]]
    assert epochs == [0, 2, 4, 6, 8, 16, 32, 40]  # resumed at epoch 8 again


def test_cli_bad_input(tmp_path):
    result = _cli("--programs", "3", "--epochs", "1", "--json", str(tmp_path / "x.json"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr == ("error: the number of programs must be even and >= 2; "
                             "see: python -m scratch.soup --help\n")
    assert not (tmp_path / "x.json").exists()
