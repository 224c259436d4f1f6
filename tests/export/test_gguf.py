"""GGUF export checked in llama.cpp itself (xllamacpp): it loads, and it computes what PyTorch
does."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.gguf_backend import GgufBackend
from serving.helpers import UsageError
from training.export.gguf import export_gguf, rope_permute

N_NEW = 12


@pytest.fixture(scope="module")
def reference(random_llama: Path):
    """PyTorch model, tokenizer, prompts, and the ids llama.cpp cannot report one by one."""
    tok = AutoTokenizer.from_pretrained(random_llama)
    model = AutoModelForCausalLM.from_pretrained(random_llama, dtype=torch.float32).eval()
    # Special tokens end generation in llama.cpp; lone bytes of multi-byte characters are held
    # back by its server. Ban both in both runtimes so each step reports exactly one token id.
    banned = [i for i in range(len(tok)) if i in tok.all_special_ids or "\ufffd" in tok.decode([i])]
    prompts = [tok(t)["input_ids"] for t in ("What is 12+35?", "Hello world", "def foo(x):")]
    prompts.append(tok.apply_chat_template([{"role": "user", "content": "hi there"}],
                                           add_generation_prompt=True, tokenize=True,
                                           return_dict=False))
    return model, tok, banned, prompts


def torch_greedy(model, ids: list[int], n: int, banned: list[int]):
    """Greedy ids under the same ban, and the unbanned log-softmax at each step."""
    ids, out, logprobs = list(ids), [], []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            logprobs.append(torch.log_softmax(logits, -1))
            logits[banned] = -float("inf")
            ids.append(int(logits.argmax()))
            out.append(ids[-1])
    return out, logprobs


def test_rope_permute_interleaves_halves():
    # One head of dim 4: HF pairs rows (0, 2) and (1, 3); llama.cpp wants them adjacent.
    w = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)
    assert rope_permute(w, 1)[:, 0].tolist() == [0, 4, 2, 6]


@pytest.mark.parametrize("outtype,tol", [("f32", 1e-4), ("f16", 5e-2)])
def test_greedy_tokens_match_pytorch(random_llama, random_gguf, reference, outtype, tol):
    model, _, banned, prompts = reference
    backend = GgufBackend(random_llama, random_gguf[outtype], n_threads=1)
    worst = 0.0
    for prompt in prompts:
        want, logprobs = torch_greedy(model, prompt, N_NEW, banned)
        entries = backend.greedy_tokens(prompt, N_NEW, banned, n_probs=3)
        assert [e["id"] for e in entries] == want, f"{outtype}: prompt {prompt}"
        for step, e in enumerate(entries):
            for top in e["top_logprobs"]:
                worst = max(worst, abs(top["logprob"] - float(logprobs[step][top["id"]])))
    print(f"{outtype}: max |log-prob difference| vs PyTorch {worst:.2e}")
    assert worst <= tol, f"{outtype}: log-probs differ by up to {worst:.2e}"


def test_q8_0_top1_agreement(random_llama, random_gguf, reference):
    """Teacher-forced next-token agreement along PyTorch's greedy path (reported, and bounded)."""
    model, _, banned, prompts = reference
    backend = GgufBackend(random_llama, random_gguf["q8_0"], n_threads=1)
    agree = total = 0
    for prompt in prompts:
        want, _ = torch_greedy(model, prompt, N_NEW, banned)
        for step in range(N_NEW):
            got = backend.greedy_tokens(prompt + want[:step], 1, banned)[0]["id"]
            agree += got == want[step]
            total += 1
    print(f"q8_0 top-1 agreement with PyTorch: {agree}/{total}")
    # Random weights have close runners-up, so this is a floor against a broken quantizer (a
    # wrong block layout scores near 0), not the accuracy of a trained model.
    assert agree / total >= 0.7


def test_metadata(random_llama, random_gguf):
    config = AutoModelForCausalLM.from_pretrained(random_llama).config
    tok = AutoTokenizer.from_pretrained(random_llama)
    r = gguf.GGUFReader(random_gguf["f16"])

    def field(key):
        f = r.fields[key]
        return f.contents()

    assert field("general.architecture") == "llama"
    expect = {
        "llama.context_length": 256, "llama.embedding_length": 128, "llama.block_count": 2,
        "llama.feed_forward_length": 256, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 32,
        "llama.vocab_size": config.vocab_size,
    }
    assert {k: field(k) for k in expect} == expect
    assert field("llama.rope.freq_base") == pytest.approx(10000.0)
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "qwen2"
    tokens = field("tokenizer.ggml.tokens")
    assert tokens == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    types = field("tokenizer.ggml.token_type")
    assert {types[i] for i in tok.all_special_ids} == {gguf.TokenType.CONTROL}
    assert len(field("tokenizer.ggml.merges")) > 0
    assert field("tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template") == tok.chat_template
    names = {t.name for t in r.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names  # tied embeddings
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    q8 = {t.name: t.tensor_type for t in gguf.GGUFReader(random_gguf["q8_0"]).tensors}
    assert q8["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert q8["output_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_q8_0_size(random_gguf):
    ratio = random_gguf["q8_0"].stat().st_size / random_gguf["f16"].stat().st_size
    print(f"q8_0 / f16 size: {ratio:.3f}")
    assert ratio <= 0.55


def test_q8_0_falls_back_to_f16_for_odd_rows(tmp_path):
    from tests.export.conftest import make_random_llama

    folder = make_random_llama(tmp_path / "odd", intermediate_size=200)  # ffn_down rows of 200
    out = export_gguf(folder, tmp_path / "odd-q8_0.gguf", "q8_0")
    assert out["f16_fallback"] == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(out["path"]).tensors}
    assert kinds["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_rejects_unknown_outtype(random_llama, tmp_path):
    with pytest.raises(UsageError, match="outtype"):
        export_gguf(random_llama, tmp_path / "x.gguf", "q4_k")


# --- the command line, on the real fine-tuned tiny chat model (LoRA merged into the weights) ---

@pytest.fixture(scope="module")
def chat_copy(tiny_chat, tmp_path_factory) -> Path:
    """A copy of the session's tiny chat model, so exports here leave the fixture untouched."""
    import shutil

    out = tmp_path_factory.mktemp("cli") / "tiny-chat"
    shutil.copytree(tiny_chat, out, ignore=shutil.ignore_patterns("gguf", "onnx"))
    return out


def test_cli_export_runs_in_llama_cpp_like_pytorch(chat_copy):
    from tests.conftest import run_cli
    from training.evaluate import evaluate

    proc = run_cli("scripts/export_gguf.py", str(chat_copy), "--outtype", "f32")
    target = chat_copy / "gguf" / "tiny-chat-f32.gguf"
    assert target.is_file() and "wrote" in proc.stdout
    modelfile = (chat_copy / "gguf" / "Modelfile").read_text()
    assert "FROM ./tiny-chat-f32.gguf\n" in modelfile
    assert not list((chat_copy / "gguf").glob(".*"))  # no temporary files left behind

    # Same answers, so the same accuracy: the GGUF backend picks the only export, f32.
    torch_report = evaluate(chat_copy, "torch", per_task=8)
    gguf_report = evaluate(chat_copy, "gguf", per_task=8)
    assert gguf_report["tasks"] == torch_report["tasks"]
    assert gguf_report["samples"] == torch_report["samples"]  # including the reply texts


def test_cli_errors_are_one_line(chat_copy, tmp_path):
    from tests.conftest import run_cli

    def fails(*args):
        proc = run_cli("scripts/export_gguf.py", *args, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        return lines[0]

    run_cli("scripts/export_gguf.py", str(chat_copy), "--outtype", "q8_0")
    assert "--force" in fails(str(chat_copy), "--outtype", "q8_0")
    run_cli("scripts/export_gguf.py", str(chat_copy), "--outtype", "q8_0", "--force")

    assert "does not exist" in fails(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "holds no finished model" in fails(str(tmp_path / "empty"))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(
        '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    (gpt2 / "model.safetensors").write_bytes(b"")
    assert "unsupported architecture GPT2LMHeadModel" in fails(str(gpt2))
