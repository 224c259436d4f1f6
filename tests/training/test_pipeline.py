"""The demo pipeline runs only unfinished stages, in order, and stops at a failing one."""

import subprocess

import pytest

from training import pipeline
from training.common import UsageError


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    (tmp_path / "training").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "export_onnx.py").write_text("")
    (tmp_path / "scripts" / "export_gguf.py").write_text("")
    monkeypatch.chdir(tmp_path)
    ran = []

    def fake_run(cmd, **kw):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    return tmp_path, ran


def test_every_stage_runs_on_a_fresh_clone_and_serve_comes_last(fake_repo):
    _, ran = fake_repo
    pipeline.main(["--serve"])
    names = [" ".join(c[1:4]) for c in ran]
    assert names[0].startswith("-m training.pretrain") and names[1].startswith("-m training.finetune")
    assert any("export_onnx.py" in " ".join(c) for c in ran)
    assert sum("export_gguf.py" in " ".join(c) for c in ran) == 2  # f16 and q8_0
    assert [c[c.index("--runtime") + 1] for c in ran if "--runtime" in c] == ["torch", "onnx", "gguf", "gguf"]
    assert "--gguf" in ran[-2]  # the q8_0 file, scored on the same questions
    assert ran[-1][1:3] == ["-m", "serving.app"]


def test_finished_stages_are_reused(fake_repo, capsys):
    root, ran = fake_repo
    for _, _, done in pipeline.stages(serve=False, backend="gguf"):
        if "tiny-chat" in str(done) and "eval-" in str(done):
            continue
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text("{}")
    pipeline.main([])
    assert all("training.evaluate" in " ".join(c) for c in ran) and len(ran) == 4
    assert "pretrain: done already" in capsys.readouterr().out


def test_a_failing_stage_stops_the_pipeline_with_one_line(fake_repo, monkeypatch):
    _, ran = fake_repo
    monkeypatch.setattr(pipeline.subprocess, "run",
                        lambda cmd, **kw: ran.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(UsageError, match="stage 'pretrain' failed"):
        pipeline.main([])
    assert len(ran) == 1
