import json

import pytest

from serving.backend import ChatEncoder
from serving.helpers import UsageError
from training import chatdata, tasks
from training.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["What is 1 + 2? The answer is 3. Reverse the word cat."] * 20, 320)


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_only_assistant_tokens_have_labels(tok):
    messages = conv(("system", "Be brief."), ("user", "What is 1 + 2?"), ("assistant", "3"),
                    ("user", "And 2 + 2?"), ("assistant", "4"))
    ids, labels = chatdata.encode(ChatEncoder(tok), messages, max_len=512)
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
    good = chatdata.Row(conv(("user", "hi"), ("assistant", "ok")), "line 1")
    bad = chatdata.Row(messages, "line 2")
    enc = chatdata.encode_rows(tok, [good, bad, good], max_len=128)
    assert len(enc.input_ids) == 2 and enc.bad == {reason: 1}
    assert f"skipped 1 bad rows: 1 {reason} (line 2: {reason})" in capsys.readouterr().out
    with pytest.raises(UsageError, match="1 bad rows"):
        chatdata.encode_rows(tok, [good, bad], max_len=128, on_bad="reject")


def test_local_jsonl_and_parquet_load(tmp_path):
    rows = [{"messages": conv(("user", f"q{i}"), ("assistant", f"a{i}"))} for i in range(5)]
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r.messages for r in chatdata.load_rows(str(jsonl))] == [r["messages"] for r in rows]
    import datasets

    parquet = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert [r.messages for r in chatdata.load_rows(str(parquet))] == [r["messages"] for r in rows]


def test_one_odd_row_does_not_change_how_the_others_are_read(tok, tmp_path, capsys):
    # `datasets` infers one type per column: a list content made it read "1" as the number 1,
    # and 50 valid rows were then skipped as empty. Rows are read against the schema, one by one.
    rows = [{"messages": conv(("user", f"What is {i} + 1?"), ("assistant", str(i + 1)))}
            for i in range(50)]
    odd = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                        {"role": "assistant", "content": "1"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:10] + [odd] + rows[10:])
                    + "not json at all\n")
    enc = chatdata.encode_rows(tok, chatdata.load_rows(str(path)), max_len=128)
    assert len(enc.input_ids) == 50
    out = capsys.readouterr().out
    assert "line 11: content is not a string" in out and "line 52: not JSON" in out


def test_an_empty_dataset_is_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UsageError, match="has no rows"):
        chatdata.load_rows(str(empty))


def test_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="neither a local file"):
        chatdata.load_rows(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "nomessages.jsonl"
    bad.write_text('{"text": "hello"}\n')
    with pytest.raises(UsageError, match="no 'messages' field"):
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


def test_turns_deal_every_question_once_into_longer_conversations():
    single = chatdata.builtin_rows(["addition", "glossary"])
    packed = chatdata.builtin_rows(["addition", "glossary"], turns=8, seed=3)
    assert {r["task"] for r in single} == {"addition", "glossary"}
    assert len(packed) == -(-len(single) // 8)
    assert all(len(r["messages"]) == 16 for r in packed[:-1])
    flat = sorted(json.dumps(m) for r in packed for m in r["messages"])
    assert flat == sorted(json.dumps(m) for r in single for m in r["messages"])
    assert packed != chatdata.builtin_rows(["addition", "glossary"], turns=8, seed=4)


def test_general_answers_are_scored_by_their_words():
    ex = tasks.Example("general", "How many legs does a spider have?", "eight|8")
    assert ex.correct("A spider has 8 legs.") and ex.correct("Eight.")
    assert not ex.correct("A spider has 88 legs") and not ex.correct("weightless")
    assert tasks.Example("addition", "What is 1 + 2?", "3").correct(" 3.")


def test_sum3_is_a_held_out_task_not_taught_by_default():
    train, held = tasks.sum3_examples()
    assert len(train) + len(held) == 50 ** 3 and not {e.question for e in train} & {
        e.question for e in held}
    a, b, c = (int(x) for x in held[0].question[8:-1].split(" + "))
    assert held[0].answer == str(a + b + c)
    assert "sum3" not in tasks.TAUGHT and "sum3" in tasks.TASKS


def test_a_task_limit_keeps_a_fixed_subset():
    rows = chatdata.builtin_rows(["addition", "sum3"], limit={"sum3": 300}, seed=1)
    sum3 = [r["messages"][0]["content"] for r in rows if r["task"] == "sum3"]
    assert len(sum3) == 300 and len(set(sum3)) == 300
    again = chatdata.builtin_rows(["addition", "sum3"], limit={"sum3": 300}, seed=1)
    assert sum3 == [r["messages"][0]["content"] for r in again if r["task"] == "sum3"]
    assert sum(r["task"] == "addition" for r in rows) > 9000  # other tasks untouched
