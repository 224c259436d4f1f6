"""The trainer's length-split micro-batches, and the pretraining corpus: both must leave the
result unchanged (the same gradients; the same text in every process)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from tests.conftest import ROOT
from training.trainer import LabelledLoss, backward_in_parts, split_by_length


def test_split_by_length_keeps_every_item_and_pads_less():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(26, 31, 60), rng.integers(40, 58, 4)])
    idx = rng.permutation(len(lengths))
    parts = split_by_length(idx, lengths)
    assert len(parts) == 2
    assert sorted(np.concatenate(parts)) == sorted(idx)
    padded = sum(len(p) * lengths[p].max() for p in parts)
    assert padded < 0.75 * len(idx) * lengths.max()
    same = np.full(10, 30)  # nothing to gain: one batch
    assert len(split_by_length(np.arange(10), same)) == 1


def _batch(rows: list[list[int]], loss_from: list[int]) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row, start) in enumerate(zip(rows, loss_from)):
        ids[r, : len(row)] = torch.tensor(row)
        labels[r, start : len(row)] = torch.tensor(row[start:])
        mask[r, : len(row)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64))


ROWS = [list(np.random.default_rng(1).integers(1, 50, n)) for n in (6, 7, 6, 5, 30, 28)]
LOSS_FROM = [3, 4, 3, 2, 5, 20]  # unequal loss tokens per row, as in chat data


def test_the_labelled_loss_is_the_models_own_loss_with_less_work():
    model = _tiny_llama()
    batch = _batch(ROWS, LOSS_FROM)
    own = model(**batch).loss
    own.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ours = LabelledLoss(model)(**batch)
    ours.backward()
    torch.testing.assert_close(ours, own)
    for a, b in zip(want, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batches_give_the_whole_batch_gradient():
    model = _tiny_llama()
    net = LabelledLoss(model)
    rows, loss_from = ROWS, LOSS_FROM

    def grads(batches):
        model.zero_grad()
        loss = backward_in_parts(net, batches)
        return float(loss), [p.grad.clone() for p in model.parameters()]

    whole_loss, whole = grads([_batch(rows, loss_from)])
    parts_loss, parts = grads([_batch(rows[:4], loss_from[:4]), _batch(rows[4:], loss_from[4:])])
    assert abs(whole_loss - parts_loss) < 1e-5
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_window_of_steps_is_those_steps_of_the_whole_run():
    """A federated client runs steps [a, b) of a run's schedule from a fresh optimizer
    (train_window). One window over the whole run is the run itself: the same batches, learning
    rates and clipping as `train`; two windows differ only by the optimizer's restart."""
    from training.trainer import TrainConfig, train, train_window

    lengths = np.array([len(r) for r in ROWS])

    def get_batch(idx):
        return _batch([ROWS[i] for i in idx], [LOSS_FROM[i] for i in idx])

    cfg = TrainConfig(steps=6, lr=3e-3, warmup=2, batch_size=4, weight_decay=0.0,
                      checkpoint_every=0)
    start = {k: v.clone() for k, v in _tiny_llama().state_dict().items()}

    def weights(run) -> dict[str, torch.Tensor]:
        model = _tiny_llama()
        model.load_state_dict(start)
        run(model)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    whole = weights(lambda m: train(m, get_batch, len(ROWS), cfg, None, lengths=lengths))
    window = weights(lambda m: train_window(m, get_batch, len(ROWS), cfg, range(6), lengths))
    halves = weights(lambda m: [train_window(m, get_batch, len(ROWS), cfg, range(a, a + 3),
                                             lengths) for a in (0, 3)])
    for name, w in whole.items():
        torch.testing.assert_close(window[name], w, rtol=0, atol=1e-7)
    assert any(not torch.allclose(halves[n], w) for n, w in whole.items())
    assert any(not torch.allclose(start[n], w) for n, w in whole.items())


def test_corpus_is_the_same_in_every_process_and_environment(tmp_path):
    """pydoc prints memory addresses, os.environ and the running Python's path; the corpus must
    not carry them, or the default model would change from one run (and machine) to the next."""
    code = ("import hashlib; from training import corpus; "
            "print(hashlib.sha256('\\n'.join(corpus.pydoc_documents(1_500_000)).encode()).hexdigest())")
    other_python = tmp_path / "python3"  # the same interpreter, installed at another path
    other_python.symlink_to(os.path.realpath(sys.executable))
    runs = [(sys.executable, {"PATH": "/usr/bin:/bin", "MLZERO_PROBE": "a"}),
            (str(other_python), {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
                                 "TZ": "Asia/Tokyo"})]
    digests = {subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True).stdout for python, env in runs}
    assert len(digests) == 1, digests


def test_self_distilled_replies_end_at_a_whole_sentence():
    from training.finetune import self_distilled_rows
    from training.tokenizer import train_tokenizer

    tok = train_tokenizer(["Paris is a city. It is big. Yes"] * 30, 300)

    class Fake(torch.nn.Module):
        """Replies with fixed text: one stops at the end-of-turn token, one is cut off."""

        def generate(self, input_ids, **kw):
            texts = ["Paris is a city.<|im_end|>", "It is big. Yes it is big and"]
            rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            width = max(map(len, rows))
            rows = [r + [tok.pad_token_id] * (width - len(r)) for r in rows]
            return torch.cat([input_ids, torch.tensor(rows)], 1)

    rows = self_distilled_rows(Fake(), tok, ["Where?", "Big?"], max_new_tokens=20)
    assert [r.messages[1]["content"] for r in rows] == ["Paris is a city.", "It is big."]
    assert rows[0].messages[0] == {"role": "user", "content": "Where?"}
