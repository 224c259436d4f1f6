"""Train a byte-level BPE tokenizer with `tokenizers` and save it as a transformers fast tokenizer.

The pre-tokenizer is the Qwen2 split pattern (one digit per piece, so "123" is three tokens and
arithmetic stays learnable) followed by GPT-2's byte-level mapping. Because it is a pattern that
llama.cpp knows by name ("qwen2"), exported GGUF files tokenize exactly like transformers does.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from serving.helpers import ArgumentParser, AtomicDir, UsageError, cli_main

# The regex Qwen2 uses (llama.cpp: LLAMA_VOCAB_PRE_TYPE_QWEN2).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_TOKENIZER = "qwen2"

EOS = "<|endoftext|>"  # separates pretraining documents; also padding
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn: generation stops here
SPECIAL_TOKENS = [EOS, IM_START, IM_END]

# ChatML, as used by Qwen2.5 and SmolLM2. No BOS token: the same text tokenizes the same way
# in transformers, onnxruntime and llama.cpp.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Learn BPE merges on `texts`; return a ready transformers tokenizer with a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=EOS,
        additional_special_tokens=[IM_START],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m training.tokenizer",
        description="Train the byte-level BPE tokenizer on the local corpus and save it.",
    )
    parser.add_argument("--out", required=True, help="directory to save tokenizer files into")
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        raise UsageError("--vocab-size must be at least 300 (256 bytes + special tokens + merges)")
    from training.corpus import build_documents

    tok = train_tokenizer(build_documents(), args.vocab_size)
    with AtomicDir(args.out) as tmp:
        tok.save_pretrained(tmp)
    print(f"saved tokenizer ({len(tok)} tokens) to {args.out}")


if __name__ == "__main__":
    cli_main(main)()
