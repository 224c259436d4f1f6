"""training.federated: FedAvg on Flower's simulation engine.

- Our FedAvg (scratch.federated) and Flower's agree: the same clients, data, seeds and local
  steps give the same averaged weights after one round.
- What reaches the server is a Flower message of arrays and numbers, from another process.
- The federated LoRA command: only adapters travel (bytes per round vs full weights), a NaN and
  a crashing client are dropped and recorded, each client alone and the centralized run are
  reported in the contract's shape.
- Bad input: one line, exit 2.

The Flower runs start Ray (tens of seconds): they are marked slow.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from serving.helpers import cli_main

ROOT = Path(__file__).resolve().parents[2]


class ScratchTrainer:
    """A Flower client that trains exactly as scratch.federated's Client does."""

    def __init__(self, settings: dict, partition: int, num_partitions: int):
        from scratch.federated import core

        self.client = core.make_clients(core.Settings(**settings))[partition]

    def fit(self, arrays, rnd, config):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # as on our side of the comparison: see the test
            update = self.client.train(arrays, rnd, float(config["lr"]))
        return update.weights, update.num_examples, {"loss": update.loss}


def scratch_trainer(settings: dict, partition: int, num_partitions: int) -> ScratchTrainer:
    return ScratchTrainer(settings, partition, num_partitions)


def logged_scratch_trainer(settings: dict, log: Path, partition: int,
                           num_partitions: int) -> ScratchTrainer:
    """scratch_trainer, noting in `log` which process built which client's trainer."""
    with log.open("a") as f:
        f.write(f"{os.getpid()} {partition}\n")
    return ScratchTrainer(settings, partition, num_partitions)


@pytest.mark.slow
def test_our_fedavg_and_flowers_agree_after_one_round():
    from flwr.app import ArrayRecord, MetricRecord
    from threadpoolctl import threadpool_limits

    from scratch.federated import core
    from scratch.nn.optim import cosine_lr
    from training.federated import engine

    s = core.Settings(clients=3, rounds=1, split="dirichlet", alpha=1.0, batch_size=64)
    # A BLAS matmul's rounding depends on how many threads split it (Ray's workers get one,
    # this process may have more): both sides use one, so the same computation is compared.
    with threadpool_limits(1):
        ours = core.run(s)["weights"]
    initial = core.get_weights(core.new_model(s.seed))
    lr = cosine_lr(0, s.rounds, s.lr, warmup=min(2, s.rounds // 4))  # what core.run uses
    seen: list = []
    plan = engine.Plan(initial=initial, clients=s.clients, rounds=1, config={"lr": lr},
                       inspect=seen.extend)
    flower = engine.simulate(functools.partial(scratch_trainer, asdict(s)), plan,
                             num_cpus=1, key="agreement")["arrays"]
    assert set(flower) == set(ours)
    moved = 0.0
    for name, w in ours.items():
        np.testing.assert_allclose(flower[name], w, rtol=0, atol=2e-6, err_msg=name)
        moved = max(moved, float(np.abs(w - initial[name]).max()))
    assert moved > 1e-3  # the round did train: agreement is not two copies of the start

    # What the server received: per client an ArrayRecord of the model's weights and a
    # MetricRecord of numbers, sent from a ClientApp process other than this one.
    assert len(seen) == s.clients
    for message in seen:
        assert not message.has_error()
        assert set(message.content.keys()) == {"arrays", "metrics"}
        assert isinstance(message.content["arrays"], ArrayRecord)
        assert list(message.content["arrays"].keys()) == list(initial)
        metrics = message.content["metrics"]
        assert isinstance(metrics, MetricRecord)
        assert all(isinstance(v, (int, float)) for v in metrics.values())
        assert metrics["pid"] != os.getpid()


@pytest.mark.slow
def test_flower_run_resumes_from_its_last_finished_round(tmp_path):
    """Two rounds on Flower, stopped; then --resume to three: rounds 1-2 come from the
    checkpoint, only round 3 trains, and it starts from the checkpoint's weights: the result is
    our FedAvg's round 3 from those weights."""
    from threadpoolctl import threadpool_limits

    from scratch.federated import core
    from scratch.nn.optim import cosine_lr
    from training.federated import engine

    s = core.Settings(clients=3, rounds=3, split="iid", batch_size=64)
    initial = core.get_weights(core.new_model(s.seed))
    trainer = functools.partial(scratch_trainer, asdict(s))
    settings = {"scratch": asdict(s)}

    def lr(rnd: int) -> float:  # core.run's schedule
        return cosine_lr(rnd - 1, s.rounds, s.lr, warmup=min(2, s.rounds // 4))

    def plan(rounds: int, seen: list, resume: bool) -> engine.Plan:
        return engine.Plan(initial=initial, clients=s.clients, rounds=rounds,
                           checkpoint=tmp_path / "ckpt", resume=resume, settings=settings,
                           inspect=seen.extend, config_for_round=lambda rnd: {"lr": lr(rnd)})

    first_seen: list = []
    built = tmp_path / "built.txt"
    first = engine.simulate(functools.partial(logged_scratch_trainer, asdict(s), built),
                            plan(2, first_seen, False), num_cpus=1, key="resume-a")
    # One ClientApp process (one CPU) served every client in both rounds and built each
    # client's trainer once: its data is loaded once per process, not once per message.
    builds = built.read_text().split("\n")[:-1]
    assert len({line.split()[0] for line in builds}) == 1
    assert sorted(line.split()[1] for line in builds) == ["0", "1", "2"]
    after_two, _ = engine.load_state(tmp_path / "ckpt", settings)
    resumed_seen: list = []
    resumed = engine.simulate(trainer, plan(3, resumed_seen, True), num_cpus=1, key="resume-b")

    assert len(first_seen) == 2 * s.clients and len(resumed_seen) == s.clients
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["rounds"][:2] == first["rounds"]
    with threadpool_limits(1):  # as ScratchTrainer.fit (see the agreement test)
        updates = [c.train(after_two, 3, lr(3)) for c in core.make_clients(s)]
    ours = core.fedavg([(u.weights, u.num_examples) for u in updates])
    for name, w in ours.items():
        np.testing.assert_allclose(resumed["arrays"][name], w, rtol=0, atol=2e-6, err_msg=name)
        assert np.abs(w - after_two[name]).max() > 0  # round 3 did train


def make_llama(out: Path) -> Path:
    from tests.export.conftest import make_random_llama

    return make_random_llama(out, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             initializer_range=0.02)


@pytest.mark.slow
def test_federated_lora_command(tmp_path):
    base = make_llama(tmp_path / "rand-llama")
    out = tmp_path / "fed.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.federated", "--base", str(base), "--clients", "2",
         "--rounds", "3", "--local-steps", "2", "--batch-size", "4", "--per-task", "3",
         "--tasks", "addition,glossary", "--num-cpus", "1", "--nan", "0:1", "--crash", "1:2",
         "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    r1, r2, r3 = report["federated"]["rounds"]
    assert r1["dropped"] == [{"client": 0, "reason": "non-finite weights"}]
    assert r2["dropped"][0]["client"] == 1 and "crashed" in r2["dropped"][0]["reason"]
    assert r1["clients"] == r2["clients"] == 1 and r3["clients"] == 2 and not r3["dropped"]
    assert "round 1: client 0 dropped" in proc.stderr
    # Only the adapters travel: 2 clients x (down + up) x adapter bytes, a fraction of the
    # full weights.
    assert report["bytes_per_round"] == r3["bytes"] == 2 * 2 * report["adapter_bytes"]
    assert r2["bytes"] == 3 * report["adapter_bytes"]  # the crashed client sent nothing back
    assert report["bytes_per_round_full_weights"] == 4 * report["full_weight_bytes"]
    assert report["bytes_per_round"] < report["bytes_per_round_full_weights"]
    assert [c["data"] for c in report["clients_alone"]] == [["addition"], ["glossary"]]
    for tasks in [report["federated"]["tasks"], report["centralized"]["tasks"],
                  *(c["tasks"] for c in report["clients_alone"])]:
        assert set(tasks) == {"addition", "glossary"}
        assert all(set(r) >= {"accuracy", "n"} and r["n"] == 3 for r in tasks.values())


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    from training.federated.__main__ import main

    with pytest.raises(SystemExit) as info:
        cli_main(main)(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--base", "models/no-such-base"], "run: python -m training.pretrain"),
    (["--clients", "5"], "only 3 tasks"),
    (["--tasks", "addition,poetry"], "--tasks must be some of"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--num-cpus", "0"], "--num-cpus must be >= 1"),
    (["--noise", "-1"], "--noise"),
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, tmp_path, argv, needle):
    code, err = run_main(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_crash_flag_names_an_existing_client(capsys, tmp_path):
    base = make_llama(tmp_path / "rand-llama")
    capsys.readouterr()  # the model writer's progress bar
    code, err = run_main(capsys, ["--base", str(base), "--clients", "2", "--crash", "7:1"])
    assert code == 2 and "only 2 clients" in err and len(err.strip().splitlines()) == 1
