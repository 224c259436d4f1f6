"""The Modelfile: its TEMPLATE rendered by Go's text/template equals apply_chat_template, and
the file follows Ollama's Modelfile grammar."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from serving.helpers import UsageError
from training.export.ollama import derive_format, go_template, modelfile

GO_RENDER = Path(__file__).with_name("render_ollama.go")

CHATS = [
    [{"role": "user", "content": "What is 17+25?"}],
    [{"role": "system", "content": "You are a terse assistant.\nOne line only."},
     {"role": "user", "content": "Reverse the word: banana"}],
    [{"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Define 'tensor' with {{ braces }} and \"quotes\"."}],
    [{"role": "system", "content": "S"},
     {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d\n\n"},
     {"role": "user", "content": "  e  \tf\n"}],
]

# SmolLM2's template: a default system prompt when the chat has none.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
# TinyLlama-chat (Zephyr style): BOS-free roles with </s> after each turn.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + "
    "message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ '<|system|>\n' + "
    "message['content'] + eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'"
    " + message['content'] + eos_token }}{% endif %}{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def tok(random_llama):
    return AutoTokenizer.from_pretrained(random_llama)


def with_template(tok, template: str):
    t = AutoTokenizer.from_pretrained(tok.name_or_path)
    t.chat_template = template
    return t


def go_render(template: str, chats: list, system: str | None) -> list[str]:
    go = shutil.which("go")
    assert go, "Go is required (make system-deps installs golang-go)"
    payload = json.dumps({"template": template, "system": system or "", "chats": chats})
    env = {**os.environ, "GO111MODULE": "off"}  # one std-only file, no module needed
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    proc = subprocess.run([go, "run", str(GO_RENDER)], input=payload, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def templates(tok):
    return {"chatml": tok, "smollm2": with_template(tok, SMOL_TEMPLATE),
            "zephyr": with_template(tok, ZEPHYR_TEMPLATE)}


def test_go_template_equals_jinja(tok):
    """Every chat, every template family: Go's rendering == apply_chat_template, char for char."""
    for name, t in templates(tok).items():
        fmt = derive_format(t)
        got = go_render(go_template(fmt), CHATS, fmt.default_system)
        want = [t.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
        for chat, g, w in zip(CHATS, got, want):
            assert g == w, f"{name}: {[m['role'] for m in chat]}\n{g!r}\n!=\n{w!r}"


def test_default_system_becomes_SYSTEM(tok):
    smol = templates(tok)["smollm2"]
    text = modelfile("m.gguf", smol)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert f'SYSTEM """{system}"""' in text
    assert "SYSTEM" not in modelfile("m.gguf", tok)  # ChatML without a default: no SYSTEM


@pytest.mark.parametrize("template,why", [
    ("{% for m in messages %}Turn {{ loop.index }}: {{ m['content'] }}\n{% endfor %}", "format"),
    ("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}", "once"),
    ("{{ messages[-1]['content'] }}", "earlier"),
])
def test_inexpressible_templates_are_refused(tok, template, why):
    with pytest.raises(UsageError, match="cannot be expressed for Ollama|cannot render"):
        derive_format(with_template(tok, template))


# Ollama's Modelfile grammar (docs/modelfile.md; parser/parser.go): commands, quoting rules, and
# the documented parameters with their value types.
COMMANDS = {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}
PARAMETER_TYPES = {"num_ctx": int, "repeat_last_n": int, "repeat_penalty": float,
                   "temperature": float, "seed": int, "stop": str, "num_predict": int,
                   "top_k": int, "top_p": float, "min_p": float}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(COMMAND, argument) pairs, unquoted the way Ollama's parser does; asserts the grammar."""
    commands, i = [], 0
    while i < len(text):
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            i = text.find("\n", i) + 1 or len(text)
            continue
        m = re.compile(r"([A-Za-z]+)[ \t]+").match(text, i)
        assert m, f"bad command at {text[i:i + 30]!r}"
        name, i = m.group(1).upper(), m.end()
        assert name in COMMANDS, name
        if name == "PARAMETER":
            m = re.compile(r"([A-Za-z0-9_]+)[ \t]+").match(text, i)
            assert m, "PARAMETER needs a name"
            name, i = f"PARAMETER {m.group(1)}", m.end()
        if text.startswith('"""', i):
            end = text.index('"""', i + 3)
            arg, i = text[i + 3:end], end + 3
        elif text.startswith('"', i):
            end = text.index('"', i + 1)
            arg, i = text[i + 1:end], end + 1
            assert "\n" not in arg, "a single-quoted value cannot span lines"
        else:
            end = re.compile(r"[ \t\r\n]|$").search(text, i).start()
            arg, i = text[i:end], end
        rest = re.compile(r"[ \t]*(\r?\n|$)").match(text, i)
        assert rest, f"junk after {name}: {text[i:i + 20]!r}"
        i = rest.end()
        assert all(c.isprintable() or c in "\n\t " for c in arg), f"{name}: unprintable characters"
        commands.append((name, arg))
    return commands


def test_modelfile_follows_ollama_grammar(tok):
    text = modelfile("tiny-chat-f16.gguf", templates(tok)["smollm2"], context_length=512)
    cmds = parse_modelfile(text)
    names = [c for c, _ in cmds]
    assert names[0] == "FROM" and names.count("FROM") == 1 and names.count("TEMPLATE") == 1
    assert dict(cmds)["FROM"] == "./tiny-chat-f16.gguf"
    for name, arg in cmds:
        if name.startswith("PARAMETER "):
            param = name.split()[1]
            assert param in PARAMETER_TYPES, f"unknown parameter {param}"
            PARAMETER_TYPES[param](arg)  # raises if the value has the wrong type
    assert ("PARAMETER stop", "<|im_end|>") in cmds
    assert ("PARAMETER num_ctx", "512") in cmds
    # The TEMPLATE survives quoting byte for byte.
    fmt = derive_format(templates(tok)["smollm2"])
    assert dict(cmds)["TEMPLATE"] == go_template(fmt)


def test_modelfile_refuses_unquotable_text(tok):
    with pytest.raises(UsageError, match='"""'):
        modelfile("m.gguf", tok, system='say """hi"""')
    with pytest.raises(UsageError, match="drops"):
        modelfile("m.gguf", tok, system="bell \x07")
