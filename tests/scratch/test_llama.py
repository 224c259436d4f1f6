"""scratch/nn's Llama as a real model: its folder loads in transformers with the same logits,
exports to GGUF and ONNX, and llama.cpp / onnxruntime continue it token for token like our own
generation loop (with its KV cache). Plus the tokenizer, the safetensors writer, the data split,
training and the command line.

The parity model has randomised norms and a large init (HINTS: unit norms and std 0.02 give
near-tied logits that hide mapping bugs), grouped-query attention and both tied and untied
output layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratch.nn import chatdata, hf, llama_chat
from scratch.nn.llama import Generator, Llama, LlamaConfig
from scratch.nn.tokenizer import CHAT_TEMPLATE, SPLIT_PATTERN, Tokenizer, render_chat
from tests.conftest import run_cli

QUESTIONS = ["What is 12 + 34?", "What is 7 - 93?", "What is 0 + 0?"]
TEXTS = ["What is 12 + 34?", "Hello world, how are you?", "  spaces\n\nand\ttabs 2024!",
         "Grüße aus München", "<|im_start|>user\nhi<|im_end|>\n", "x=3.14; y='it's'"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    train, _ = chatdata.split()
    return Tokenizer.train((chatdata.render_conversation(q, a) for q, a in train[::20]), 24)


def random_llama(tok: Tokenizer, tied: bool, seed: int = 0) -> Llama:
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=tied, init_std=0.2)
    model = Llama(cfg, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data = (1 + 0.5 * rng.normal(size=p.shape)).astype(np.float32)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def folder(request, tokenizer, tmp_path_factory) -> tuple[Path, Llama]:
    model = random_llama(tokenizer, tied=request.param)
    out = tmp_path_factory.mktemp("llama") / "scratch-chat"
    hf.save_folder(out, model, tokenizer)
    return out, model


def hf_model(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def our_greedy(model: Llama, prompt: list[int], n: int, banned=()) -> list[int]:
    """n greedy tokens through our KV-cache loop, with banned ids never chosen."""
    return Generator(model).greedy([prompt], n, stop_id=None, banned=banned)[0]


# ------------------------------------------------------------------ tokenizer, data, file


def test_tokenizer_matches_the_tokenizers_library(folder, tokenizer):
    path, _ = folder
    theirs = AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        assert theirs(text)["input_ids"] == tokenizer.encode(text), text
        assert theirs.decode(tokenizer.encode(text)) == tokenizer.decode(
            tokenizer.encode(text), skip_special=False)
    for q in QUESTIONS:
        ids = theirs.apply_chat_template([{"role": "user", "content": q}],
                                         add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
        assert list(ids) == tokenizer.chat_prompt(q)
    assert Tokenizer.from_json(json.loads((path / "tokenizer.json").read_text())).ids \
        == tokenizer.ids


def test_digits_stay_single_tokens(tokenizer):
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("What is 12 + 345?")]
    assert [p for p in pieces if p.strip().isdigit()] == ["1", "2", "3", "4", "5"]


def test_split_pattern_and_template_are_training_tokenizers():
    from training import tokenizer as project

    assert SPLIT_PATTERN == project.SPLIT_PATTERN
    assert CHAT_TEMPLATE == project.CHAT_TEMPLATE


def test_split_matches_training_tasks():
    from training import tasks

    for op in "+-":
        ours = chatdata.arithmetic_examples(op)
        theirs = tasks.arithmetic_examples(op)
        for a, b in zip(ours, theirs, strict=True):
            assert a == [(e.question, e.answer) for e in b]


def test_render_chat_matches_the_jinja_template(folder):
    theirs = AutoTokenizer.from_pretrained(folder[0])
    messages = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant",
                                                                "content": "3"}]
    for gen in (True, False):
        assert theirs.apply_chat_template(messages, add_generation_prompt=gen,
                                          tokenize=False) == render_chat(messages, gen)


def test_safetensors_are_read_and_written_like_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"b.weight": rng.normal(size=(3, 5)).astype(np.float32),
              "a": rng.normal(size=(7,)).astype(np.float32),
              "model.c": rng.normal(size=(2, 1, 3)).astype(np.float32)}
    # float32 arrays, as a model folder holds: byte for byte the reference writer's file
    assert hf.safetensors_bytes(arrays) == save(arrays, metadata={"format": "pt"})
    mixed = {**arrays, "i": rng.integers(0, 9, size=(7,)).astype(np.int64),
             "h": rng.normal(size=(3,)).astype(np.float16)}
    ours = tmp_path / "ours.safetensors"
    ours.write_bytes(hf.safetensors_bytes(mixed))
    for name, array in load_file(str(ours)).items():
        np.testing.assert_array_equal(array, mixed[name])
    save_file(mixed, str(tmp_path / "theirs.safetensors"))
    back = hf.load_safetensors(tmp_path / "theirs.safetensors")
    assert set(back) == set(mixed)
    for name, array in back.items():
        assert array.dtype == mixed[name].dtype
        np.testing.assert_array_equal(array, mixed[name])


def test_folder_passes_the_model_folder_check_and_reloads(folder):
    from serving.helpers import require_model

    path, model = folder
    assert require_model(path, "x") == path
    assert not list(path.parent.glob(".*"))  # no staging folders left behind
    again, _ = hf.load_folder(path)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters(),
                                  strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)


def test_write_folder_replaces_a_folder_whole(tmp_path):
    from scratch import helpers

    target = tmp_path / "m"
    helpers.write_folder(target, {"a.txt": "one", "b.bin": b"\x00\x01"})
    (target / "gguf").mkdir()  # derived from the old weights: must not survive
    helpers.write_folder(target, {"a.txt": "two"})
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "two"
    assert (target.stat().st_mode & 0o777) == 0o777 & ~helpers.current_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folders left
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        helpers.write_folder(tmp_path / "f", {"a.txt": "x"})


# ------------------------------------------------------------------ parity with transformers


def test_logits_equal_transformers(folder, tokenizer):
    path, model = folder
    ids = np.array([tokenizer.chat_prompt(q)[:12] for q in QUESTIONS])
    with torch.no_grad():
        ref = hf_model(path)(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(ref).max() > 1.0  # not near-uniform: a mapping bug would show
    full = model(ids).data
    cached = Generator(model).logits(ids)
    assert np.abs(full - ref).max() <= 1e-4
    assert np.abs(cached - ref).max() <= 1e-4
    rows = np.array([3, 14, 30])
    np.testing.assert_allclose(model(ids, rows).data, ref.reshape(-1, ref.shape[-1])[rows],
                               atol=1e-4)


def test_greedy_replies_equal_transformers_generate(folder, tokenizer):
    path, model = folder
    ref = hf_model(path)
    prompts = [tokenizer.chat_prompt(q) for q in QUESTIONS]
    ours = Generator(model).greedy(prompts, 10, tokenizer.eos_id, batch_size=2)
    for prompt, reply in zip(prompts, ours, strict=True):
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                           eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
        theirs = out[0, len(prompt):].tolist()
        if tokenizer.eos_id in theirs:
            theirs = theirs[: theirs.index(tokenizer.eos_id)]
        assert reply == theirs


# ------------------------------------------------------------------ the real runtimes


@pytest.mark.slow
def test_gguf_in_llama_cpp_continues_like_our_loop(folder, tokenizer):
    from serving.gguf_backend import GgufBackend

    path, model = folder
    run_cli("scripts/export_gguf.py", str(path), "--outtype", "f32")
    backend = GgufBackend(path, path / "gguf" / f"{path.name}-f32.gguf", n_threads=1)
    # llama.cpp stops at special tokens and holds back partial UTF-8: ban both everywhere
    banned = [i for i, t in enumerate(tokenizer.tokens)
              if i in tokenizer.special_ids.values() or "\ufffd" in tokenizer.decode([i])]
    for q in QUESTIONS:
        prompt = tokenizer.chat_prompt(q)
        entries = backend.greedy_tokens(prompt, 8, banned)
        assert [e["id"] for e in entries] == our_greedy(model, prompt, 8, banned), q


@pytest.mark.slow
def test_onnx_in_onnxruntime_continues_like_our_loop(folder, tokenizer):
    from serving.backend import Sampling
    from serving.onnx_backend import OnnxBackend

    path, model = folder
    run_cli("scripts/export_onnx.py", str(path))
    backend = OnnxBackend(path)
    for q in QUESTIONS:
        prompt = tokenizer.chat_prompt(q)
        got = list(backend._token_ids(prompt, Sampling(8)))
        assert got == our_greedy(model, prompt, 8), q
    info = json.loads((path / "onnx" / "export.json").read_text())
    assert info["max_abs_logit_diff_vs_torch"] <= 1e-4


# ------------------------------------------------------------------ training and the CLI


def test_a_few_training_steps_lower_the_loss():
    settings = {"steps": 30, "batch_size": 32, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                "warmup": 5, "lr": 3e-3}
    result = llama_chat.train(settings, seed=0, progress=False)
    losses = result["losses"]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.slow
def test_cli_writes_a_loadable_folder_and_the_contract_json(tmp_path):
    out, report = tmp_path / "scratch-chat", tmp_path / "out.json"
    proc = run_cli("-m", "scratch.nn", "--task", "llama-chat", "--out", str(out),
                   "--steps", "2", "--eval-every", "1", "--json", str(report))
    data = json.loads(report.read_text())
    assert {"test_accuracy", "seconds", "parameters"} <= set(data)
    assert 0.0 <= data["test_accuracy"] <= 1.0 and data["held_out_questions"] == 2000
    assert [p["step"] for p in data["curve"]] == [0, 1, 2]
    assert "wrote" in proc.stdout
    # the learning-curve figure of docs/nn.md is drawn from this JSON
    run_cli("-m", "scratch.nn.figures", "--llama-json", str(report), "--out", str(tmp_path))
    assert (tmp_path / "nn_llama_chat_curve.png").read_bytes()[:4] == b"\x89PNG"
    model, tok = hf.load_folder(out)
    assert model.num_parameters() == data["parameters"]
    ids = np.array([tok.chat_prompt(QUESTIONS[0])])
    with torch.no_grad():
        ref = hf_model(out)(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(model(ids).data - ref).max() <= 1e-4


@pytest.mark.parametrize("argv,needle", [
    (["--task", "llama-chat"], "needs --out"),
    (["--task", "llama-chat", "--out", "{file}"], "not a folder"),
    (["--task", "llama-chat", "--out", "{tmp}/m", "--steps", "0"], "--steps"),
    (["--task", "llama-chat", "--out", "{tmp}/m", "--epochs", "3"], "--epochs"),
    (["--task", "digits-mlp", "--out", "{tmp}/m"], "llama-chat only"),
])
def test_bad_llama_chat_input_is_one_error_line(argv, needle, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [a.format(file=blocker, tmp=tmp_path) for a in argv]
    proc = run_cli("-m", "scratch.nn", *argv, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "m").exists()
