"""training.images: the digits split, the augmentation, the judge, and both tasks at tiny sizes
(the full-size targets are measured by the command itself; see BENCHMARKS.md, "Image models")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_cli_contract import assert_contract, run
from training import images


@pytest.fixture(scope="module")
def split():
    return images.digits_split()


@pytest.fixture(scope="module")
def judge(split):
    x_train, y_train, _, _ = split
    return images.digit_judge(x_train, y_train)


def test_the_split_is_scratchs_fixed_split(split):
    from scratch.nn.data import load_digits

    x_train, y_train, x_test, y_test = split
    s_train, t_train, s_test, t_test = load_digits()
    assert (len(x_train), len(x_test)) == (1438, 359)
    assert np.array_equal(y_train, t_train) and np.array_equal(y_test, t_test)
    assert np.allclose(x_train.reshape(len(x_train), -1) / 16.0, s_train)
    assert np.allclose(x_test.reshape(len(x_test), -1) / 16.0, s_test)
    assert x_train.shape[1:] == (8, 8) and x_train.max() == 16


def test_shift_moves_an_image_by_one_pixel():
    x = np.zeros((200, 8, 8), np.float32)
    x[:, 3:5, 3:5] = 16  # a 2x2 block in the middle: a one-pixel move keeps it whole
    rng = np.random.default_rng(0)
    assert np.array_equal(images.shift_images(x, 0.0, rng), x)
    moved = images.shift_images(x, 1.0, rng)
    assert not np.array_equal(moved, x)
    for image in moved:
        ys, xs = np.nonzero(image)
        assert image.sum() == x[0].sum()  # nothing fell off the edge
        assert (ys.min(), xs.min()) != (3, 3) and abs(ys.min() - 3) <= 1 and abs(xs.min() - 3) <= 1
    assert len({(np.nonzero(m)[0].min(), np.nonzero(m)[1].min()) for m in moved}) == 8


def test_schedule_warms_up_then_decays_to_a_tenth():
    assert images.lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert images.lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert images.lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert images.lr_factor(99, 100, 10) == pytest.approx(0.1, abs=1e-3)
    assert images.lr_factor(55, 100, 10) < images.lr_factor(30, 100, 10)


def test_the_judge_tells_digits_from_noise(judge, split):
    _, _, x_test, y_test = split
    real = images.likeness(judge, x_test)
    noise = images.likeness(judge, np.random.default_rng(0).uniform(0, 16, (100, 8, 8)))
    blank = images.likeness(judge, np.zeros((10, 8, 8)))
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, len(x_test), (2, 300))
    different = y_test[i] != y_test[j]
    blend = images.likeness(judge, (x_test[i][different] + x_test[j][different]) / 2)
    assert real["digit_likeness"] >= 0.8 and real["classes_present"] == 10
    assert sum(real["class_counts"]) == round(real["digit_likeness"] * len(x_test))
    assert noise["digit_likeness"] <= 0.02
    assert blank["digit_likeness"] == 0.0
    assert blend["digit_likeness"] <= 0.15  # half a 3 and half a 7 is not a digit


TINY_GENERATE = dict(steps=3, batch_size=8, timesteps=5, channels=[8, 8], warmup=1)


def test_generate_at_a_tiny_size_reports_and_draws():
    s = images.GenerateSettings(**TINY_GENERATE)
    result = images.generate(s, n_samples=6)
    samples, report = result["samples"], result["report"]
    assert samples.shape == (6, 8, 8) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 16
    for key in ("digit_likeness", "classes_present", "seconds", "judge_test_accuracy",
                "real_test_images", "uniform_noise"):
        assert key in report, key
    assert 0 <= report["digit_likeness"] <= 1 and 0 <= report["classes_present"] <= 10
    assert report["judge_test_accuracy"] > 0.95
    assert len(report["history"]) == 3
    again = images.generate(s, n_samples=6)["samples"]
    assert np.array_equal(samples, again)  # the seed fixes the run


def test_classify_at_a_tiny_size_learns_something():
    s = images.ClassifySettings(epochs=6, batch_size=64, lr=3e-3, hidden_size=16, layers=1,
                                heads=2, warmup_epochs=1)
    report = images.classify(s)
    assert report["test_images"] == 359
    assert report["test_accuracy"] == report["test_correct"] / 359
    assert report["test_accuracy"] > 0.4  # chance is 0.1
    assert report["history"][0][1] > report["final_loss"]


def test_the_command_writes_json_samples_and_grid(tmp_path):
    out = tmp_path / "gen.json"
    tiny = ["--batch-size", "8", "--timesteps", "5", "--channels", "[8, 8]", "--warmup", "1"]
    images.main(["--task", "generate", "--json", str(out), "--samples", str(tmp_path / "s.npy"),
                 "--steps", "2", *tiny])  # every setting is a flag
    report = json.loads(out.read_text())
    assert report["task"] == "generate" and report["settings"]["steps"] == 2
    assert report["settings"]["channels"] == [8, 8]
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (100, 8, 8) and 0 <= samples.min() and samples.max() <= 16
    assert (tmp_path / "gen.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


@pytest.mark.parametrize("argv,hint", [
    (["--task", "classify", "--json", "o.json", "--samples", "s.npy"], "--task classify"),
    (["--task", "generate", "--json", "o.json", "--samples", "s.txt"], "--samples s.npy"),
    (["--task", "generate", "--json", "o.json", "--epochs", "3"], "--task generate"),
    (["--task", "classify", "--json", "o.json", "--timesteps", "3"], "--task classify"),
    (["--task", "draw", "--json", "o.json"], "--help"),
    (["--task", "generate", "--json", "o.json", "--steps", "0"], "--help"),
])
def test_bad_input_is_one_line(argv, hint, tmp_path):
    proc = run(["-m", "training.images", *argv], cwd=tmp_path)
    assert hint in assert_contract(proc)
    assert not (tmp_path / "o.json").exists()
