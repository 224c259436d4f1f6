import json

import pytest

from training import chatdata, tasks
from training.common import UsageError
from training.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["What is 1 + 2? The answer is 3. Reverse the word cat."] * 20, 320)


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_only_assistant_tokens_have_labels(tok):
    messages = conv(("system", "Be brief."), ("user", "What is 1 + 2?"), ("assistant", "3"),
                    ("user", "And 2 + 2?"), ("assistant", "4"))
    ids, labels = chatdata.encode(tok, messages, max_len=512)
    assert len(ids) == len(labels)
    trained = [t for t, lab in zip(ids, labels) if lab != chatdata.IGNORE]
    assert tok.decode(trained) == "3<|im_end|>\n4<|im_end|>\n"
    assert all(lab in (chatdata.IGNORE, t) for t, lab in zip(ids, labels))


@pytest.mark.parametrize("messages,reason", [
    (conv(("robot", "hi"), ("assistant", "x")), "unknown role"),
    (conv(("user", "  "), ("assistant", "x")), "empty content"),
    (conv(("user", "hi")), "no assistant turn"),
    (conv(("user", "hi " * 400), ("assistant", "x")), "over-long"),
])
def test_bad_rows_are_counted_and_skipped_or_rejected(tok, messages, reason, capsys):
    good = {"messages": conv(("user", "hi"), ("assistant", "ok"))}
    enc = chatdata.encode_rows(tok, [good, {"messages": messages}, good], max_len=128)
    assert len(enc.input_ids) == 2 and enc.bad == {reason: 1}
    assert f"skipped 1 bad rows: 1 {reason}" in capsys.readouterr().out
    with pytest.raises(UsageError, match="1 bad rows"):
        chatdata.encode_rows(tok, [good, {"messages": messages}], max_len=128, on_bad="reject")


def test_local_jsonl_and_parquet_load_through_datasets(tmp_path):
    rows = [{"messages": conv(("user", f"q{i}"), ("assistant", f"a{i}"))} for i in range(5)]
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert chatdata.load_rows(str(jsonl)) == rows
    import datasets

    parquet = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert chatdata.load_rows(str(parquet)) == rows


def test_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="neither a local file"):
        chatdata.load_rows(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "nomessages.jsonl"
    bad.write_text('{"text": "hello"}\n')
    with pytest.raises(UsageError, match="no 'messages' column"):
        chatdata.load_rows(str(bad))


def test_builtin_rows_cover_every_task():
    rows = chatdata.builtin_rows()
    assert {r["task"] for r in rows} == {"addition", "subtraction", "reverse", "glossary"}
    n_glossary = sum(r["task"] == "glossary" for r in rows)
    assert n_glossary == chatdata.BUILTIN_REPEATS["glossary"] * len(tasks.glossary_examples()[0])
    chatdata.check_messages(rows[0]["messages"])


def test_sums_with_a_one_digit_operand_are_weighted():
    rows = chatdata.builtin_rows()
    counts: dict[str, int] = {}
    for r in rows:
        if r["task"] == "addition":
            q = r["messages"][0]["content"]
            counts[q] = counts.get(q, 0) + 1
    train = tasks.arithmetic_examples("+")[0]
    short = {ex for ex in train if tasks.has_one_digit_operand(ex)}
    assert {"What is 58 + 10?", "What is 10 + 10?"}.isdisjoint(ex.question for ex in short)
    assert len(short) > 1000 and {ex.question[8:].split()[0] for ex in short} >= {"7", "58"}
    for ex in train:
        want = chatdata.ONE_DIGIT_OPERAND_REPEATS if ex in short else 1
        assert counts[ex.question] == want, ex
