"""Bad input gets one line on stderr and exit status 2 — never a traceback or a half-written
folder."""

import pytest

from tests.conftest import run_cli


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for needle in needles:
        assert needle in last


def test_finetune_without_a_base_model_names_the_stage_to_run(tmp_path):
    proc = run_cli("-m", "training.finetune", "--base", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "chat"), check=False)
    assert_one_line_error(proc, "python -m training.pretrain")
    assert not (tmp_path / "chat").exists()


def test_unknown_recipe_setting_is_rejected(tmp_path):
    (tmp_path / "recipe.yaml").write_text("pretrain:\n  hidden: 64\n")
    proc = run_cli("-m", "training.pretrain", "--out", str(tmp_path), check=False)
    assert_one_line_error(proc, "unknown pretrain setting", "hidden")


def test_broken_recipe_yaml_is_rejected(tmp_path):
    (tmp_path / "recipe.yaml").write_text("pretrain: [unclosed\n")
    proc = run_cli("-m", "training.pretrain", "--out", str(tmp_path), check=False)
    assert_one_line_error(proc, "not valid YAML")


@pytest.mark.parametrize("dataset,needle", [("missing.jsonl", "neither a local file"),
                                            ("notes.txt", "expected a .jsonl")])
def test_bad_dataset_paths(tiny_base, tmp_path, dataset, needle):
    if dataset.endswith(".txt"):
        (tmp_path / dataset).write_text("hello\n")
    proc = run_cli("-m", "training.finetune", "--base", str(tiny_base), "--out",
                   str(tmp_path / "o"),
                   "--dataset", str(tmp_path / dataset), check=False)
    assert_one_line_error(proc, needle)


def test_evaluate_an_unfinished_folder(tmp_path):
    proc = run_cli("-m", "training.evaluate", "--model", str(tmp_path), check=False)
    assert_one_line_error(proc, "python -m training.finetune")
