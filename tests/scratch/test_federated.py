"""scratch.federated: FedAvg from first principles (numpy, no torch, no Flower).

What is checked: the weighted average, the splits (every example dealt exactly once; a small
Dirichlet alpha skews labels), that a client sends only arrays and numbers, a crashing and a NaN
client dropped with the round's record saying so, bytes per round, DP clipping and the epsilon
formula, --resume giving the same weights as an uninterrupted run, and the CLI's contract.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest

from scratch import helpers
from scratch.federated import cli, core

PROG = "python -m scratch.federated"


@pytest.fixture(scope="module")
def data() -> core.Digits:
    return core.Digits.load()


def small(**kw) -> core.Settings:
    """Three clients, a round costs well under a second."""
    return core.Settings(**{"clients": 3, "rounds": 2, "batch_size": 64, **kw})


def test_fedavg_is_the_example_weighted_mean():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([4.0, -1.0], np.float32)}
    out = core.fedavg([(a, 1), (b, 3)])
    np.testing.assert_allclose(out["w"], [(1 + 12) / 4, (2 - 3) / 4])
    assert out["w"].dtype == np.float32


@pytest.mark.parametrize("split,alpha", [("iid", 1.0), ("dirichlet", 0.1), ("dirichlet", 1.0)])
def test_every_example_is_dealt_to_exactly_one_client(data, split, alpha):
    parts = core.split(data.y_train, core.Settings(clients=10, split=split, alpha=alpha))
    joined = np.concatenate(parts)
    assert len(parts) == 10 and min(len(p) for p in parts) >= 2
    assert sorted(joined.tolist()) == list(range(len(data.y_train)))


def test_a_small_alpha_gives_each_client_few_labels(data):
    def labels_per_client(alpha):
        parts = core.split(data.y_train, core.Settings(clients=10, split="dirichlet",
                                                       alpha=alpha))
        # labels making up 90% of a client's shard
        counts = [np.sort(np.bincount(data.y_train[p], minlength=10))[::-1] for p in parts]
        return np.mean([np.searchsorted(np.cumsum(c) / c.sum(), 0.9) + 1 for c in counts])

    assert labels_per_client(0.1) < 4 < labels_per_client(100.0)


def test_a_client_sends_only_arrays_and_numbers(data):
    """What leaves a client is an Update: the model's parameters and two numbers; none of its
    raw images (and no array of an image's shape) is in it."""
    s = small(rounds=1)
    client = core.make_clients(s, data)[0]
    model = core.new_model(s.seed)
    update = client.train(core.get_weights(model), 1, s.lr)
    assert {f.name for f in fields(update)} == {"weights", "num_examples", "loss"}
    assert set(update.weights) == {name for name, _ in model.named_parameters()}
    shapes = {name: p.data.shape for name, p in model.named_parameters()}
    for name, array in update.weights.items():
        assert isinstance(array, np.ndarray) and array.dtype == np.float32, name
        assert array.shape == shapes[name], name
    assert isinstance(update.num_examples, int) and isinstance(update.loss, float)


def test_crashing_and_nan_clients_are_dropped_and_recorded(data):
    s = small()
    clients = core.make_clients(s, data, {"crash": {0: {2}}, "nan": {2: {1}}})
    with pytest.warns(UserWarning, match="dropped") as caught:
        result = core.run(s, clients, data)
    r1, r2 = result["rounds"]
    assert r1["clients"] == 2 and r1["dropped"] == [{"client": 2,
                                                     "reason": "non-finite weights"}]
    assert r2["clients"] == 2 and r2["dropped"][0]["client"] == 0
    assert "crashed" in r2["dropped"][0]["reason"]
    assert len(caught) == 2
    assert all(np.isfinite(w).all() for w in result["weights"].values())
    assert r2["accuracy"] > 0.5  # training went on


def test_bytes_per_round_count_the_download_and_each_upload(data):
    s = small(rounds=1)
    clients = core.make_clients(s, data, {"crash": {1: {1}}})
    with pytest.warns(UserWarning):
        (rec,) = core.run(s, clients, data)["rounds"]
    size = core.num_bytes(core.get_weights(core.new_model(0)))
    assert size == 4 * (64 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10)
    assert rec["bytes_down"] == 3 * size and rec["bytes_up"] == 2 * size  # one crashed
    assert rec["bytes"] == 5 * size


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(data, tmp_path):
    s = small()
    whole = core.run(s, core.make_clients(s, data), data)
    ckpt = tmp_path / "run.ckpt.npz"
    first = core.run(s, core.make_clients(s, data), data, checkpoint=ckpt, stop_after=1)
    assert len(first["rounds"]) == 1
    rest = core.run(s, core.make_clients(s, data), data, checkpoint=ckpt, resume=True)
    assert [r["round"] for r in rest["rounds"]] == [1, 2]
    for name, w in whole["weights"].items():
        np.testing.assert_array_equal(rest["weights"][name], w)
    with pytest.raises(ValueError, match="other settings"):
        core.run(small(lr=1e-3), core.make_clients(s, data), data, checkpoint=ckpt, resume=True)


def test_dp_clips_each_update_and_noise_moves_the_average(data):
    s = small(rounds=1, clip=0.5)
    client = core.make_clients(s, data)[0]
    w0 = core.get_weights(core.new_model(s.seed))
    update = client.train(w0, 1, s.lr)
    norm = core.global_norm([update.weights[k] - w0[k] for k in w0])
    assert norm == pytest.approx(0.5, rel=1e-3)  # local training moves it further than 0.5
    quiet = core.dp_average(w0, [update.weights], 2, 0.5, 0.0, np.random.default_rng(0))
    for k in w0:  # the update over the 2 clients asked (the other dropped out: a zero update)
        np.testing.assert_allclose(quiet[k], w0[k] + (update.weights[k] - w0[k]) / 2, atol=1e-6)
    noisy = core.dp_average(w0, [update.weights], 2, 0.5, 1.0, np.random.default_rng(0))
    name = max(w0, key=lambda k: w0[k].size)  # the largest matrix: a good sample of noise
    spread = np.std(noisy[name] - quiet[name])
    assert spread == pytest.approx(1.0 * 0.5 / 2, rel=0.02)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert math.isinf(core.epsilon(0.0, 10, 1e-5))
    assert core.epsilon(1.0, 30, 1e-5) > core.epsilon(1.0, 10, 1e-5)
    assert core.epsilon(3.0, 30, 1e-5) < core.epsilon(1.0, 30, 1e-5)
    # rho + 2 sqrt(rho log(1/delta)), rho = T / (2 z^2): T=30, z=1 -> 15 + 2 sqrt(15 * 11.51)
    assert core.epsilon(1.0, 30, 1e-5) == pytest.approx(15 + 2 * math.sqrt(15 * math.log(1e5)))


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        helpers.cli_main(cli.main, PROG, argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_cli_writes_the_contract_keys(capsys, tmp_path):
    out = tmp_path / "fl.json"
    code, _, err = run_cli(capsys, ["--clients", "3", "--split", "dirichlet", "--alpha", "1.0",
                                    "--rounds", "2", "--batch-size", "64", "--json", str(out)])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all({"round", "accuracy", "bytes"} <= set(r) for r in report["rounds"])
    assert report["final_accuracy"] == report["rounds"][-1]["accuracy"]
    assert 0.5 < report["centralized_accuracy"] <= 1.0
    assert report["privacy"]["epsilon"] is None  # no noise: no guarantee claimed
    # --resume from the finished run's checkpoint: nothing left to do, the same records
    code, _, err = run_cli(capsys, ["--clients", "3", "--split", "dirichlet", "--alpha", "1.0",
                                    "--rounds", "2", "--batch-size", "64", "--json", str(out),
                                    "--resume", "--no-centralized"])
    assert code == 0, err
    assert json.loads(out.read_text())["rounds"] == report["rounds"]


@pytest.mark.parametrize("argv,needle", [
    (["--noise", "1"], "--clip"),
    (["--crash", "12:1"], "only 10 clients"),
    (["--nan", "x"], "CLIENT:ROUND"),
    (["--alpha", "0"], "--alpha"),
    (["--clients", "0"], "--clients"),
    (["--resume", "--json", "/nonexistent-dir/x.json"], "no checkpoint"),
    (["--split", "dirichlet", "--alpha", "0.001", "--clients", "200"], "Dirichlet"),
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, argv, needle):
    code, _, err = run_cli(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert lines[0].endswith(f"; see: {PROG} --help")


def test_the_figure_draws_runs_and_refuses_other_json(capsys, tmp_path):
    from scratch.federated import figure

    run = {"rounds": [{"round": 1, "accuracy": 0.5, "bytes": 8}, {"round": 2, "accuracy": 0.8,
                                                                     "bytes": 8}],
           "final_accuracy": 0.8, "centralized_accuracy": 0.9, "centralized": {"epochs": 2},
           "settings": {"split": "dirichlet", "alpha": 0.1, "clients": 3, "local_epochs": 1}}
    src, out = tmp_path / "run.json", tmp_path / "fig.png"
    src.write_text(json.dumps(run))
    with pytest.raises(SystemExit) as info:
        helpers.cli_main(figure.main, figure.PROG, [str(src), "--out", str(out)])
    assert info.value.code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    src.write_text("[1, 2]")
    with pytest.raises(SystemExit) as info:
        helpers.cli_main(figure.main, figure.PROG, [str(src), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
