"""The CLI rejects bad input with one line and exit code 2, before Prefect or any compute starts."""

from pathlib import Path

import pytest
from cli_helpers import gptflow

ROOT = Path(__file__).resolve().parents[1]




@pytest.mark.parametrize(
    ("yaml_text", "sets", "needle"),
    [
        ("model:\n  n_layerz: 2\n", [], "unknown config key 'model.n_layerz'"),
        ("pretrain:\n  max_steps: lots\n", [], "'pretrain.max_steps' must be an integer"),
        ("model:\n  n_embd: 30\n  n_head: 4\n", [], "'model.n_embd' (30) must be divisible"),
        ("corpus:\n  source: /nowhere/corpus.txt\n", [], "corpus source not found: /nowhere/corpus.txt"),
        ("", ["finetune.tasks=[nope]"], "unknown task 'nope'"),
        ("", ["--only", "pretrian"], "unknown stage 'pretrian'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, yaml_text, sets, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    extra = [a for s in sets for a in (["--set", s] if "=" in s else [s])]
    proc = gptflow("run", "--config", str(cfg), "--workspace", str(tmp_path / "ws"), *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws" / "artifacts").exists()  # nothing computed


def test_stages_shows_the_plan(tmp_path):
    proc = gptflow("stages", "--config", str(ROOT / "configs/micro.yaml"), "--workspace", str(tmp_path), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[:-1]  # the last line names the artifacts directory
    names = [line.split()[0] for line in lines]
    assert names[:4] == ["corpus", "tokenizer", "encode", "pretrain"] and names[-1] == "report"
    assert "to run" in lines[0] and "never completed" in lines[0]  # corpus: nothing upstream
    # every later stage's key hashes its upstream outputs, unknown until they are computed
    assert all("waiting" in line and "runs after" in line for line in lines[1:-1])
    assert not (tmp_path / "prefect").exists()  # a dry run: Prefect never started
