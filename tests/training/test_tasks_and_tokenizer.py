import pytest

from training import tasks
from training.tokenizer import CHAT_TEMPLATE, IM_END, IM_START, train_tokenizer


def test_held_out_questions_never_appear_in_training_data():
    for make in tasks.TASKS.values():
        train, held = make()
        assert held and train
        train_q = {ex.question for ex in train}
        assert not train_q & {ex.question for ex in held}
    for op in "+-":
        lines = set(tasks.fact_lines({"+": "addition", "-": "subtraction"}[op]))
        for ex in tasks.arithmetic_examples(op)[1]:
            expr = ex.question.removeprefix("What is ").removesuffix("?")
            assert f"{expr} = {ex.answer}" not in lines
        assert len([ln for ln in lines if f" {op} " in ln]) == 9000


def test_arithmetic_answers_are_right_and_bare():
    train, held = tasks.arithmetic_examples("-")
    assert len(train) + len(held) == 100 * 100
    for ex in train[:50] + held[:50]:
        a, b = (int(t) for t in ex.question.removeprefix("What is ").removesuffix("?").split(" - "))
        assert ex.answer == str(a - b)


def test_reverse_and_glossary_examples():
    train, held = tasks.reverse_examples()
    assert all(ex.answer == ex.question.split()[-1].rstrip(".")[::-1] for ex in train + held)
    g_train, g_held = tasks.glossary_examples()
    assert {ex.answer for ex in g_held} <= set(tasks.GLOSSARY.values())
    assert len(g_held) == 2 * len(tasks.GLOSSARY)


def test_normalize_answer():
    assert tasks.normalize_answer(" 42 ") == "42"
    assert tasks.normalize_answer("one pass.") == "one pass"
    assert tasks.normalize_answer("-7") == "-7"


@pytest.fixture(scope="module")
def tok():
    texts = ["The quick brown fox jumps over the lazy dog. 12 + 34 = 46"] * 50
    texts += tasks.fact_lines("addition")[:2000]
    return train_tokenizer(texts, vocab_size=400)


def test_tokenizer_splits_digits_and_keeps_special_tokens_whole(tok):
    pieces = tok.convert_ids_to_tokens(tok("12345 apples", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.isdigit()] == list("12345")
    for special in (IM_START, IM_END, "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    text = "Héllo wörld ✓ 12 + 3"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: any text round-trips


def test_chat_template_renders_chatml(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.eos_token == IM_END
