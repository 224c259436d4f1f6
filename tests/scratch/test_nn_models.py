"""Whole models against PyTorch, optimizers, save/load, data readers, the CLI, the torch ban."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF

from scratch.nn import functional as F
from scratch.nn import train
from scratch.nn.data import CharDataset, DataLoader, load_mnist, read_idx
from scratch.nn.modules import GPT, RNN, Linear, ReLU, Sequential, TransformerBlock
from scratch.nn.optim import SGD, AdamW, clip_grad_norm, cosine_lr, count_denormals
from scratch.nn.tensor import Tensor
from tests.scratch.torch_reference import TorchBlock

ROOT = Path(__file__).resolve().parents[2]


def rel_err(a, b) -> float:
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-12))


def to64(module) -> None:
    for p in module.parameters():
        p.data = p.data.astype(np.float64)


def test_mlp_with_pytorch_initial_weights_gives_the_same_loss_and_grads():
    torch.manual_seed(0)
    t_model = tnn.Sequential(
        tnn.Linear(20, 32), tnn.ReLU(), tnn.Linear(32, 16), tnn.ReLU(), tnn.Linear(16, 5)
    ).double()
    model = Sequential(Linear(20, 32), ReLU(), Linear(32, 16), ReLU(), Linear(16, 5))
    to64(model)
    model.load_state_dict({f"layers.{k}": v.numpy() for k, v in t_model.state_dict().items()})

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 20)), rng.integers(0, 5, 8)
    loss = F.cross_entropy(model(Tensor(x)), y)
    loss.backward()
    t_loss = TF.cross_entropy(t_model(torch.from_numpy(x)), torch.from_numpy(y))
    t_loss.backward()

    assert abs(loss.item() - t_loss.item()) <= 1e-12 * abs(t_loss.item())
    t_params = dict(t_model.named_parameters())
    for name, p in model.named_parameters():
        assert rel_err(p.grad, t_params[name.removeprefix("layers.")].grad) <= 1e-9, name


def test_transformer_block_with_pytorch_initial_weights_gives_the_same_loss_and_grads():
    torch.manual_seed(1)
    t_block = TorchBlock(16, 4).double()
    with torch.no_grad():  # non-trivial norms: unit gains would hide a swapped mapping
        for ln in (t_block.ln1, t_block.ln2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    block = TransformerBlock(16, 4)
    to64(block)  # before loading: load_state_dict keeps each parameter's dtype
    block.load_state_dict(
        {
            (f"attn.{k}" if k.split(".")[0] in ("qkv", "proj") else k): v.numpy()
            for k, v in t_block.state_dict().items()
        }
    )
    rng = np.random.default_rng(1)
    x, target = rng.normal(size=(3, 7, 16)), rng.normal(size=(3, 7, 16))

    loss = ((block(Tensor(x)) - Tensor(target)) ** 2).mean()
    loss.backward()
    t_loss = ((t_block(torch.from_numpy(x)) - torch.from_numpy(target)) ** 2).mean()
    t_loss.backward()

    assert rel_err(loss.data, t_loss.item()) <= 1e-10
    t_params = dict(t_block.named_parameters())
    for name, p in block.named_parameters():
        assert rel_err(p.grad, t_params[name.removeprefix("attn.")].grad) <= 1e-8, name


def test_float32_model_stays_float32():
    model = GPT(11, 8, dim=16, n_head=2, n_layer=1, rng=np.random.default_rng(0))
    loss = F.cross_entropy(model(np.zeros((2, 8), dtype=np.int64)), np.ones((2, 8), np.int64))
    loss.backward()
    assert loss.dtype == np.float32
    assert {p.grad.dtype for p in model.parameters()} == {np.dtype(np.float32)}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizers_match_pytorch(name):
    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=(4, 3)), [rng.normal(size=(4, 3)) for _ in range(5)]
    w = Tensor(w0.copy(), requires_grad=True)
    tw = torch.tensor(w0.copy(), requires_grad=True)
    if name == "sgd":
        opt, t_opt = SGD([w], lr=0.1, momentum=0.9), torch.optim.SGD([tw], lr=0.1, momentum=0.9)
    else:
        opt = AdamW([w], lr=0.01, weight_decay=0.1)
        t_opt = torch.optim.AdamW([tw], lr=0.01, weight_decay=0.1)
    for g in grads:
        w.grad, tw.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step()
        t_opt.step()
    assert rel_err(w.data, tw.detach().numpy()) <= 1e-12


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_denormal_guard_keeps_optimizer_buffers_normal(name):
    def buffers_after_decay(flush_every: int) -> int:
        w = Tensor(np.ones(1000, np.float32), requires_grad=True)
        opt = SGD([w], lr=0.1) if name == "sgd" else AdamW([w], lr=0.1)
        for buffer in opt.buffers():
            buffer[:] = 1e-36  # tiny state, as after a long run of near-zero gradients
        opt.flush_every = flush_every
        for _ in range(60):  # zero gradients: the buffers decay geometrically
            w.grad = np.zeros(1000, np.float32)
            opt.step()
        return sum(count_denormals(b) for b in opt.buffers())

    assert buffers_after_decay(flush_every=0) > 0  # the hazard is real without the guard
    assert buffers_after_decay(flush_every=10) == 0


def test_clip_grad_norm_and_schedule():
    a, b = Tensor(np.zeros(2), requires_grad=True), Tensor(np.zeros(1), requires_grad=True)
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    assert np.sqrt((a.grad**2).sum() + (b.grad**2).sum()) == pytest.approx(1.0, rel=1e-5)
    lrs = [cosine_lr(s, 100, 1.0, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] > 0.09


def test_save_load_roundtrip_without_pickle(tmp_path):
    model = GPT(13, 8, dim=16, n_head=2, n_layer=1, rng=np.random.default_rng(0))
    model.save(tmp_path / "w.npz")
    other = GPT(13, 8, dim=16, n_head=2, n_layer=1, rng=np.random.default_rng(1))
    other.load(tmp_path / "w.npz")
    idx = np.arange(8)[None] % 13
    assert np.array_equal(model(idx).data, other(idx).data)
    with np.load(tmp_path / "w.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype == np.float32 for k in archive.files)
    wrong = GPT(13, 8, dim=16, n_head=2, n_layer=2)
    with pytest.raises(ValueError, match="missing"):
        wrong.load(tmp_path / "w.npz")


def test_train_and_eval_modes_switch_dropout():
    model = GPT(10, 8, dim=16, n_head=2, n_layer=1, dropout=0.5, rng=np.random.default_rng(0))
    idx = np.zeros((1, 8), np.int64)
    assert not np.array_equal(model(idx).data, model(idx).data)  # dropout draws differ
    model.eval()
    assert np.array_equal(model(idx).data, model(idx).data)
    assert all(not m.training for _, m in model.children())


def test_dataloader_covers_every_example_once_per_pass():
    x, y = np.arange(10)[:, None], np.arange(10)
    loader = DataLoader(x, y, 4, rng=np.random.default_rng(0))
    seen = np.concatenate([yb for _, yb in loader])
    assert len(loader) == 3 and sorted(seen) == list(range(10))


def write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)


def test_mnist_reader_on_generated_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x08)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2], 0x08)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2], 0x08)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path)
    assert x_train.shape == (5, 1, 28, 28) and x_test.shape == (2, 1, 28, 28)
    assert np.allclose(x_train[:, 0] * 255, images) and np.array_equal(y_train, labels)
    run = train.run_mnist(str(tmp_path), epochs=1)  # the whole mnist-mlp path, on 5 images
    assert run["task"] == "mnist-mlp" and 0.0 <= run["test_accuracy"] <= 1.0
    write_idx(tmp_path / "f.idx", np.arange(6, dtype=np.float32).reshape(2, 3), 0x0D)
    assert np.array_equal(read_idx(tmp_path / "f.idx"), np.arange(6).reshape(2, 3))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")


def test_char_dataset_targets_are_inputs_shifted_by_one():
    data = CharDataset("abcdefghij" * 20)
    x, y = data.batch("train", 4, 5, np.random.default_rng(0))
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert data.decode(data.encode("hello"[:0] + "abc")) == "abc"


def test_scratch_never_imports_a_framework():
    banned = re.compile(r"^\s*(import|from)\s+(torch|tensorflow|jax)\b", re.MULTILINE)
    sources = list((ROOT / "scratch").rglob("*.py"))
    assert sources
    offenders = [str(p) for p in sources if banned.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "scratch.nn", *args], cwd=cwd, capture_output=True, text=True
    )


def test_cli_help_and_bad_input():
    assert run_cli("--help").returncode == 0
    bad = run_cli("--task", "nope")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    missing = run_cli("--task", "mnist-mlp", "--data", "/nonexistent/dir")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "error" in missing.stderr


def test_cli_digits_mlp_writes_the_contract_json(tmp_path):
    out = tmp_path / "r.json"
    done = run_cli("--task", "digits-mlp", "--epochs", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"task", "test_accuracy", "final_loss", "seconds"}
    assert result["task"] == "digits-mlp" and 0.85 <= result["test_accuracy"] <= 1.0


def test_small_gpt_learns_a_repeating_text_and_samples_it():
    data = CharDataset("the cat sat on the mat. " * 40)
    rng = np.random.default_rng(0)
    model = GPT(data.vocab_size, 16, dim=32, n_head=2, n_layer=1, rng=rng)
    opt = AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        x, y = data.batch("train", 16, 16, rng)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    text = data.decode(model.generate(data.encode("the cat")[None], 17, rng, temperature=0.1)[0])
    assert text.startswith("the cat sat on the")


def test_rnn_matches_pytorch_rnn():
    torch.manual_seed(2)
    t_rnn = tnn.RNN(3, 5, batch_first=True).double()
    rnn = RNN(3, 5)
    to64(rnn)
    rnn.load_state_dict(
        {
            "input.weight": t_rnn.weight_ih_l0.detach().numpy(),
            "input.bias": (t_rnn.bias_ih_l0 + t_rnn.bias_hh_l0).detach().numpy(),
            "hidden.weight": t_rnn.weight_hh_l0.detach().numpy(),
        }
    )
    x = np.random.default_rng(2).normal(size=(2, 6, 3))
    out = rnn(Tensor(x))
    (out * out).sum().backward()
    t_out, _ = t_rnn(torch.from_numpy(x))
    (t_out * t_out).sum().backward()
    assert rel_err(out.data, t_out.detach().numpy()) <= 1e-10
    assert rel_err(rnn.hidden.weight.grad, t_rnn.weight_hh_l0.grad) <= 1e-9
    assert rel_err(rnn.input.weight.grad, t_rnn.weight_ih_l0.grad) <= 1e-9
    assert rel_err(rnn.input.bias.grad, t_rnn.bias_ih_l0.grad) <= 1e-9


def test_shift_images_moves_every_image_by_at_most_one_pixel_in_all_nine_ways():
    rng = np.random.default_rng(0)
    images = np.zeros((900, 64), dtype=np.float32)
    images[:, 3 * 8 + 4] = 1.0  # one lit pixel at row 3, column 4
    moved = train.shift_images(images, rng).reshape(900, 8, 8)
    assert moved.sum() == 900 and moved.max() == 1.0  # nothing lost inside the board
    rows, cols = np.nonzero(moved)[1:]
    offsets = set(zip((rows - 3).tolist(), (cols - 4).tolist(), strict=True))
    assert offsets == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    edge = np.zeros((9, 64), dtype=np.float32)
    edge[:, 0] = 1.0  # top-left corner: moved up or left it leaves the board
    assert 0 < train.shift_images(edge, np.random.default_rng(1)).sum() < 9


@pytest.mark.slow
def test_digits_mlp_default_reaches_the_target_on_the_seed_that_missed_it():
    """Seed 3 scored 97.21% (349/359) before the shift augmentation and 30 epochs."""
    result = train.run_digits("mlp", seed=3)
    assert result["test_accuracy"] >= 0.975


def test_digits_cnn_learns_in_one_epoch():
    result = train.run_digits("cnn", epochs=1, seed=0)
    assert result["task"] == "digits-cnn"
    assert result["test_accuracy"] > 0.8  # chance is 0.1
    assert result["history"][-1] < result["history"][0]
