"""An Ollama Modelfile derived from the model's own Jinja chat template.

Ollama formats chats with Go's text/template, not Jinja, so the template has to be translated.
Rather than hand-writing one per model, we render the Jinja template (through the tokenizer, as
transformers does) on conversations with sentinel contents, read off what it puts before and
after each role's content, the generation prompt and any default system prompt, and emit the Go
template that produces the same text. The result is checked against the Jinja rendering on a
set of conversations; a template that does not fit this per-message shape (or that Ollama's
Modelfile quoting cannot carry) is refused with a clear error instead of exported wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.helpers import UsageError
from training.export import load_tokenizer

ROLES = ("system", "user", "assistant")
S, U1 = "\u2063SYS\u2063", "\u2063USER1\u2063"
A1, U2 = "\u2063ASSISTANT1\u2063", "\u2063USER2\u2063"


@dataclass
class ChatFormat:
    """A chat template as text around each message: prefix[role] + content + suffix[role]."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str  # appended after the last user/system message to start the reply
    default_system: str | None  # what the template writes when there is no system message

    def render(self, messages: list[dict[str, str]]) -> str:
        """The text Ollama will build with our TEMPLATE (its data model, in Python)."""
        messages = ollama_messages(messages, self.default_system)
        out = []
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            out.append(self.prefix[m["role"]] + m["content"])
            if not (last and m["role"] == "assistant"):  # a last assistant turn is continued
                out.append(self.suffix[m["role"]])
            if last and m["role"] != "assistant":
                out.append(self.generation)
        return "".join(out)


def ollama_messages(messages: list[dict[str, str]], default_system: str | None) -> list[dict[str,
                                                                                             str]]:
    """Ollama's view of a chat: the Modelfile SYSTEM first when the chat has none, and
    consecutive messages of one role merged with a blank line."""
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    merged: list[dict[str, str]] = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"]:
            merged[-1] = {"role": m["role"],
                          "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append({"role": m["role"], "content": m["content"]})
    return merged


def _renderer(tokenizer):
    # llama.cpp and Ollama add BOS when tokenizing exactly when the tokenizer does; then a
    # template's literal BOS is dropped. (SmolLM2's bos is <|im_start|>, which it never adds.)
    bos = tokenizer.bos_token or ""
    if bos and tokenizer("x")["input_ids"][:1] != [tokenizer.bos_token_id]:
        bos = ""

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=generation)
        except Exception as err:  # jinja raises its own exceptions for unsupported turns
            roles = [m["role"] for m in messages]
            raise UsageError(f"chat template cannot render {roles}: {err}") from None
        return text[len(bos):] if bos and text.startswith(bos) else text

    return render


def _split(text: str, sentinel: str, what: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise UsageError(f"chat template cannot be expressed for Ollama: the {what} content "
                         "is not rendered exactly once")
    before, after = text.split(sentinel)
    return before, after


def _strip_prefix(text: str, head: str, what: str) -> str:
    if not text.startswith(head):
        raise UsageError(f"chat template cannot be expressed for Ollama: adding {what} changes "
                         "the text of earlier messages")
    return text[len(head):]


def derive_format(tokenizer) -> ChatFormat:
    """Read the per-role text of a tokenizer's chat template; raise UsageError if it has none."""
    if not tokenizer.chat_template:
        raise UsageError("the tokenizer has no chat template to translate")
    render = _renderer(tokenizer)
    u = render([{"role": "user", "content": U1}])
    ua = render([{"role": "user", "content": U1}, {"role": "assistant", "content": A1}])
    uau = render([{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                  {"role": "user", "content": U2}])
    prefix, suffix = {}, {}
    prefix["assistant"], suffix["assistant"] = _split(_strip_prefix(ua, u, "a reply"), A1,
                                                      "assistant")
    prefix["user"], suffix["user"] = _split(_strip_prefix(uau, ua, "a user turn"), U2, "user")
    user_block = prefix["user"] + U1 + suffix["user"]
    if not u.endswith(user_block):
        raise UsageError("chat template cannot be expressed for Ollama: the first user turn is "
                         "formatted differently from later ones")
    head = u[: -len(user_block)]
    generation = _strip_prefix(render([{"role": "user", "content": U1}], generation=True), u,
                               "the generation prompt")
    su = render([{"role": "system", "content": S}, {"role": "user", "content": U1}])
    if not su.endswith(user_block):
        raise UsageError("chat template cannot be expressed for Ollama: a system message changes "
                         "how the user turn is formatted")
    prefix["system"], suffix["system"] = _split(su[: -len(user_block)], S, "system")
    default_system = None
    if head:  # text before the first user turn: only a default system prompt is expressible
        if not (head.startswith(prefix["system"]) and head.endswith(suffix["system"])
                and len(head) >= len(prefix["system"]) + len(suffix["system"])):
            raise UsageError("chat template cannot be expressed for Ollama: it writes text before "
                             f"the first message that is not a system prompt: {head[:60]!r}")
        default_system = head[len(prefix["system"]): len(head) - len(suffix["system"])]
    fmt = ChatFormat(prefix, suffix, generation, default_system)
    _verify(fmt, render)
    return fmt


SAMPLES = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "You are terse.\nAnswer in one line."},
     {"role": "user", "content": "Reverse: abc"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! {{ braces }}"},
     {"role": "user", "content": "What is \"quoted\"?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e\n\nf"}],
]


def _verify(fmt: ChatFormat, render) -> None:
    for conv in SAMPLES:
        if fmt.render(conv) != render(conv, generation=True):
            raise UsageError("chat template cannot be expressed for Ollama: the derived per-role "
                             f"format does not reproduce it for roles {[m['role'] for m in conv]}")


def _literal(text: str) -> str:
    """Text as Go template literal: only the action delimiter needs escaping."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(fmt: ChatFormat) -> str:
    """The TEMPLATE: one pass over .Messages, no whitespace-trimming markers (they would eat
    the newlines that are part of the format)."""
    parts = ["{{ range $i, $m := .Messages }}",
             "{{ $last := eq (len (slice $.Messages $i)) 1 }}"]
    for n, role in enumerate(ROLES):
        parts.append(("{{ if" if n == 0 else "{{ else if") + f' eq $m.Role "{role}" }}}}')
        parts.append(_literal(fmt.prefix[role]) + "{{ $m.Content }}")
        if role == "assistant":  # a final assistant message is continued, not closed
            parts.append("{{ if not $last }}" + _literal(fmt.suffix[role]) + "{{ end }}")
        else:
            parts.append(_literal(fmt.suffix[role]))
    parts.append("{{ end }}")
    parts.append('{{ if and $last (ne $m.Role "assistant") }}' + _literal(fmt.generation)
                 + "{{ end }}")
    parts.append("{{ end }}")
    return "".join(parts)


def _quoted(text: str, what: str) -> str:
    """A Modelfile argument in triple quotes, checked against what Ollama's parser keeps."""
    if '"""' in text:
        raise UsageError(f"the {what} contains '\"\"\"', which a Modelfile cannot quote")
    bad = sorted({c for c in text if not (c.isprintable() or c in "\n\t ")})
    if bad:  # Ollama's parser silently drops non-printable characters
        raise UsageError(f"the {what} contains characters Ollama's Modelfile parser drops: {bad}")
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer, context_length: int | None = None,
              system: str | None = None) -> str:
    """Modelfile text: FROM ./<gguf>, TEMPLATE, stop at the end-of-turn token, optional SYSTEM."""
    fmt = derive_format(tokenizer)
    stop = tokenizer.eos_token
    if not stop or '"' in stop or not stop.isprintable():
        raise UsageError(f"the tokenizer's end-of-turn (eos) token {stop!r} cannot be a stop "
                         "parameter")
    lines = ["# Generated by scripts/export_gguf.py from the tokenizer's chat template.",
             f"FROM ./{gguf_name}",
             f"TEMPLATE {_quoted(go_template(fmt), 'chat template')}",
             f'PARAMETER stop "{stop}"']
    if context_length:
        lines.append(f"PARAMETER num_ctx {int(context_length)}")
    system = system if system is not None else fmt.default_system
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    return "\n".join(lines) + "\n"


def modelfile_for(model_dir: str | Path, gguf_path: str | Path, **kw: Any) -> str:
    """The Modelfile text for a model folder's tokenizer and one of its GGUF files (next to it)."""
    return modelfile(Path(gguf_path).name, load_tokenizer(model_dir), **kw)
