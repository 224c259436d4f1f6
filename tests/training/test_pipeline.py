"""The pipeline builds a recipe's stages in order, reuses what is current, and redoes what was
made from something else (weights, settings) — decided from the artifacts' records."""

import json
import subprocess
from pathlib import Path

import pytest

from serving.helpers import UsageError, weights_fingerprint
from serving.runtimes import RUNTIMES
from training import pipeline

BASE_RECIPE = "pretrain:\n  steps: 30\n"
CHAT_RECIPE = "finetune:\n  base: models/tiny-base\n  steps: 20\n"


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A checkout with the two default recipes whose stage commands only record themselves and
    write what the real ones would (a done-marker with the settings, exports, reports)."""
    (tmp_path / "training").mkdir()
    for name, text in (("tiny-base", BASE_RECIPE), ("tiny-chat", CHAT_RECIPE)):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "recipe.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    ran = []

    def fake_run(cmd, **kw):
        ran.append(cmd[1:])
        argv = cmd[1:]
        if "--out" in argv:  # a training stage: weights, then metrics.json
            out = tmp_path / argv[argv.index("--out") + 1]
            (out / "model.safetensors").write_bytes(f"weights of {out.name} v{len(ran)}".encode())
            (out / "config.json").write_text('{"model_type": "llama"}')
            section = "pretrain" if "pretrain" in argv[1] else "finetune"
            settings = pipeline.read_recipe(out, section)
            made_from = {}
            if "base" in settings:
                made_from["base_weights"] = weights_fingerprint(tmp_path / settings["base"])
            (out / "metrics.json").write_text(json.dumps({"settings": settings,
                                                          "made_from": made_from}))
        else:
            target = [a for a in argv if a.endswith(".json")] if "--json" in argv else []
            folder = tmp_path / "models" / "tiny-chat"
            made = {"made_from": {"weights": weights_fingerprint(folder)}}
            if "export_onnx.py" in argv[0]:
                target = [str(folder / "onnx" / "export.json")]
            elif "export_gguf.py" in argv[0]:
                outtype = argv[argv.index("--outtype") + 1]
                target = [str(folder / "gguf" / f"tiny-chat-{outtype}.json")]
            for t in target:
                (tmp_path / t).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / t).write_text(json.dumps(made))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    return tmp_path, ran


def names(ran):
    return [" ".join(a[:2]) if a[0] == "-m" else a[0] for a in ran]


def test_a_fresh_clone_runs_every_stage_in_order_and_serve_comes_last(fake_repo):
    _, ran = fake_repo
    pipeline.main(["--serve"])
    assert names(ran)[:2] == ["-m training.pretrain", "-m training.finetune"]
    assert sum("export_gguf.py" in a[0] for a in ran) == 2  # f16 and q8_0
    assert any("export_onnx.py" in a[0] for a in ran)
    # every runtime serving knows is evaluated, and the q8_0 file besides
    evaluated = [a[a.index("--runtime") + 1] for a in ran if "--runtime" in a]
    assert evaluated == [*RUNTIMES, "gguf"] and "--gguf" in ran[-2]
    assert ran[-1][:2] == ["-m", "serving.app"]


def test_current_stages_are_reused(fake_repo, capsys):
    _, ran = fake_repo
    pipeline.main([])
    ran.clear()
    pipeline.main([])
    assert ran == []
    assert "pretrain models/tiny-base: done already" in capsys.readouterr().out


def test_new_weights_make_every_later_artifact_stale(fake_repo):
    root, ran = fake_repo
    pipeline.main([])
    ran.clear()
    # a re-fine-tune by hand (as `training.finetune` publishes: new weights, new metrics)
    (root / "models/tiny-chat/model.safetensors").write_bytes(b"other weights")
    pipeline.main([])
    assert names(ran)[0] == "scripts/export_onnx.py"  # not the training stages
    assert len(ran) == 3 + len(RUNTIMES) + 1  # every export and every evaluation again


def test_a_changed_recipe_or_base_redoes_the_stages_made_from_it(fake_repo):
    root, ran = fake_repo
    pipeline.main([])
    ran.clear()
    (root / "models/tiny-chat/recipe.yaml").write_text(CHAT_RECIPE.replace("20", "25"))
    pipeline.main([])
    assert names(ran)[0] == "-m training.finetune"
    ran.clear()
    (root / "models/tiny-base/model.safetensors").write_bytes(b"a base retrained by hand")
    pipeline.main([])
    assert names(ran)[0] == "-m training.finetune"


def test_a_failing_stage_stops_the_pipeline_with_one_line(fake_repo, monkeypatch):
    _, ran = fake_repo
    monkeypatch.setattr(pipeline.subprocess, "run",
                        lambda cmd, **kw: ran.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(UsageError, match="stage 'pretrain models/tiny-base' failed"):
        pipeline.main([])
    assert len(ran) == 1


def test_rl_builds_the_recipes_that_start_from_this_one(fake_repo):
    root, ran = fake_repo
    (root / "models" / "tiny-rl").mkdir()
    (root / "models" / "tiny-rl" / "recipe.yaml").write_text(
        "rl:\n  base: models/tiny-chat\n  steps: 5\n")
    plan = pipeline.plan(Path("models/tiny-chat"), serve=False, backend="gguf", rl=True)
    names = [s.name for s in plan]
    assert names.index("finetune models/tiny-chat") < names.index("rl models/tiny-rl")
    assert "evaluate tiny-rl torch" in names and names.count("pretrain models/tiny-base") == 1
    (root / "models" / "other").mkdir()
    (root / "models" / "other" / "recipe.yaml").write_text(BASE_RECIPE)
    with pytest.raises(UsageError, match="no recipe"):
        pipeline.plan(Path("models/other"), serve=False, backend="gguf", rl=True)


def test_rl_builds_a_follower_through_an_intermediate_recipe(fake_repo):
    root = fake_repo[0]
    for name, text in (("tiny-sum3", "finetune:\n  base: models/tiny-chat\n  steps: 5\n"),
                       ("tiny-rl", "rl:\n  base: models/tiny-sum3\n  steps: 5\n")):
        (root / "models" / name).mkdir()
        (root / "models" / name / "recipe.yaml").write_text(text)
    names = [s.name for s in pipeline.plan(Path("models/tiny-chat"), serve=False,
                                           backend="gguf", rl=True)]
    order = ["pretrain models/tiny-base", "finetune models/tiny-chat",
             "finetune models/tiny-sum3", "rl models/tiny-rl"]
    assert [n for n in names if n in order] == order  # each once, in order
    assert "evaluate tiny-rl torch" in names and "evaluate tiny-sum3 torch" not in names


def test_unknown_recipe_lists_the_known_ones(fake_repo):
    with pytest.raises(UsageError, match="recipes here: tiny-base, tiny-chat"):
        pipeline.main(["--recipe", "nope"])


def test_every_runtime_has_its_export():
    assert set(pipeline.EXPORTS) | {"torch"} == set(RUNTIMES)


def test_an_interrupted_stage_resumes_from_its_checkpoint_unless_the_recipe_changed(fake_repo):
    root, ran = fake_repo
    ckpt = root / "models/tiny-base/checkpoint"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 10, "settings": {"steps": 30,
                                                                          "lr": 0.002}}))
    pipeline.main([])
    assert ran[0][:2] == ["-m", "training.pretrain"] and ran[0][-1] == "--resume"
    assert "--resume" not in ran[1]  # tiny-chat has no checkpoint
    ran.clear()
    (ckpt / "state.json").write_text(json.dumps({"step": 10, "settings": {"steps": 99}}))
    (root / "models/tiny-base/metrics.json").unlink()  # interrupted again, other recipe
    pipeline.main([])
    assert ran[0][:2] == ["-m", "training.pretrain"] and "--resume" not in ran[0]
    ran.clear()
    (ckpt / "state.json").write_text(json.dumps({"step": 10, "settings": {"steps": 30}}))
    (root / "models/tiny-base/metrics.json").unlink()
    pipeline.main(["--force"])  # --force redoes everything from scratch
    assert "--resume" not in ran[0]
