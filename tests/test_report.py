"""Report card: every section and plot, the config diff against the preset, offline HTML, CLI, Chromium render."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from report_fixtures import MICRO, record_in_new_workspace

from flows.cli import main
from gpt.config.loader import load_config
from reports.run_report import build_report, config_diff, confusion

OUTPUT = Path(__file__).resolve().parent / "output"  # screenshots (git-ignored)
SECTIONS = [
    "## Configuration",
    "## Environment",
    "## Stages",
    "## Data and tokenizer",
    "## Pretraining",
    "### Zero-shot over pretraining",
    "## Tasks (dev split)",
]
PLOTS = ["loss.png", "lr.png", "zeroshot.png", "confusion_sst2.png"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, str]:
    """A workspace whose MLflow store holds one recorded pipeline run with `pretrain.lr=0.01` over the micro preset."""
    ws, _, run_id = record_in_new_workspace(tmp_path_factory, "report-test", ["pretrain.lr=0.01"])
    return ws, run_id


def distinct_colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as im:
        return len(set(im.convert("RGB").resize((200, 200)).getdata()))


def test_report_has_every_section_plot_and_figure(recorded, tmp_path):
    ws, run_id = recorded
    files = build_report(MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), run_id, tmp_path)
    md = files.markdown.read_text()
    for section in SECTIONS:
        assert section in md, section
    assert sorted(p.name for p in files.plots) == sorted(PLOTS)
    for p in files.plots:
        assert distinct_colours(p) > 20, p  # a real figure, not an empty canvas
        assert f"plots/{p.name}" in md
    # the config is shown as its difference to the preset it came from: exactly the override
    diff = md.split("## Configuration")[1].split("## Environment")[0]
    assert "preset" in diff and "micro.yaml" in diff
    assert re.findall(r"^\| `([^`]+)` \|", diff, re.M) == ["pretrain.lr"]
    assert "| `pretrain.lr` | 0.003 | 0.01 |" in diff
    # task row: this run, the no_pretraining ablation, majority class, GPT-1's number
    assert "| task | metric | this run | no_pretraining | majority class | GPT-1 paper |" in md
    assert "| sst2 | accuracy | 75.0 | 55.0 | 50.0 | 91.3 |" in md
    assert "tokens/s: 2,500" in md and "MFU: 2.00%" in md and "vocabulary: 304" in md and "per token (val): 1.9" in md
    assert "Sample tokenization" in md and "`samples/step_0000000.txt`" in md and "The final text" in md
    assert "| pretrain | computed |" in md


def test_report_html_is_self_contained(recorded, tmp_path):
    ws, run_id = recorded
    files = build_report(MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), run_id, tmp_path)
    html = files.html.read_text()
    assert html.count('src="data:image/png;base64,') == len(PLOTS)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from a network
    assert "<td>sst2</td>" in html


def test_confusion_matrix_from_predictions(recorded):
    ws, run_id = recorded
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    parent = client.get_run(run_id)
    (ev,) = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.stage = 'evaluate[sst2]'"
    )
    assert confusion(client, ev, Path(client.tracking_uri.removeprefix("sqlite:///")).parent / "cm") == (
        ["0", "1"],
        [[1, 1], [0, 2]],
    )


def test_confusion_matrix_from_the_evaluate_stage_file(recorded, tmp_path):
    ws, run_id = recorded
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    run = client.create_run(client.get_run(run_id).info.experiment_id)
    client.log_text(run.info.run_id, '{"labels": ["neg", "pos"], "matrix": [[3, 1], [2, 4]]}', "confusion.json")
    client.log_text(run.info.run_id, "label,prediction\n0,0\n", "predictions.csv")  # the file wins over this
    assert confusion(client, client.get_run(run.info.run_id), tmp_path) == (["neg", "pos"], [[3, 1], [2, 4]])


def test_config_diff_without_a_recorded_preset():
    label, rows = config_diff({"pretrain.lr": "0.5", "seed": "1234"}, None)
    assert label == "the built-in defaults"
    assert rows == [["`pretrain.lr`", "0.00025", "0.5"]]
    micro = {k: str(v) for k, v in load_config(MICRO, ["pretrain.lr=0.5"]).flat().items()}
    label, rows = config_diff(micro, None)
    assert label.startswith("the closest preset `configs/micro.yaml`")
    assert rows == [["`pretrain.lr`", "0.003", "0.5"]]


def test_report_cli_writes_html_and_markdown(recorded, tmp_path, capsys):
    ws, run_id = recorded
    assert main(["report", run_id, "--out", str(tmp_path), "--workspace", str(ws)]) == 0
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()
    assert str(tmp_path / "report.html") in capsys.readouterr().out


def test_report_unknown_run_is_one_line_error(recorded, tmp_path, capsys):
    ws, _ = recorded
    assert main(["report", "0123456789abcdef", "--out", str(tmp_path), "--workspace", str(ws)]) == 2
    assert "no run '0123456789abcdef'" in capsys.readouterr().err


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    return path


def screenshot(url: str, png: Path, budget_ms: int = 2000, size: str = "1280,2000") -> Path:
    """Headless Chromium screenshot of `url` after `budget_ms` of virtual time."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={size}",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={png}",
        url,
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.is_file(), f"Chromium wrote no screenshot of {url}"
    print(f"screenshot: {png}")
    return png


def test_report_html_renders_in_chromium(recorded, tmp_path):
    ws, run_id = recorded
    files = build_report(MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), run_id, tmp_path)
    png = screenshot(files.html.as_uri(), OUTPUT / "report.png", size="1280,6000")
    assert distinct_colours(png) > 200  # text, tables and plots; a blank or error page has a handful


def test_report_survives_a_stage_produced_by_a_run_missing_from_this_store(recorded, tmp_path):
    """A stage reused from another workspace's artifacts names a producing run this store lacks."""
    from reports.runs import metric_keys

    ws, run_id = recorded
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    run = client.create_run(client.get_run(run_id).info.experiment_id, tags={"produced_by": "0" * 32})
    client.log_metric(run.info.run_id, "val_loss", 5.0)
    assert metric_keys(client, client.get_run(run.info.run_id)) == ["val_loss"]


def test_test_split_rows_are_points_beside_the_papers_test_number(tmp_path):
    """Story Cloze's `test_accuracy` (its 2016 test set) is shown ×100 next to GPT-1's Table 3 number."""
    from types import SimpleNamespace

    from reports.document import to_markdown
    from reports.run_report import _tasks

    metrics = {"story_cloze.accuracy": 0.7, "story_cloze.test_accuracy": 0.6125, "story_cloze.test_examples": 1871.0}
    parent = SimpleNamespace(data=SimpleNamespace(metrics=metrics))
    md = to_markdown(_tasks(None, parent, {}, tmp_path, tmp_path))  # type: ignore[arg-type]
    assert "| story_cloze | accuracy | 70.0 |  | 86.5 |" in md
    assert "| story_cloze | test_accuracy | 61.3 |  | 86.5 |" in md
    assert "test_examples" not in md and "`test_` rows: the task's labelled test split" in md
