"""`gptflow ui`: the MLflow UI over the workspace's store, checked through its REST API and in headless Chromium.

Slow: `mlflow ui` takes 20-80 s to answer on a busy 2-core machine. The Chromium part drives the
page over the DevTools protocol (websockets, already installed with uvicorn) because the runs table
is a JS app: the parent run's row must be expanded with a click to show its stage children.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import descendants
from report_fixtures import make_tokenizer, record_run

pytestmark = pytest.mark.slow
OUTPUT = Path(__file__).resolve().parent / "output"  # screenshots (git-ignored)
ROOT = Path(__file__).resolve().parents[1]
STAGES = ["corpus", "tokenizer", "encode", "pretrain", "finetune[sst2]", "evaluate[sst2]", "report"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, experiment id, parent run id, pid) of `gptflow ui` over a workspace with one recorded pipeline run."""
    ws = tmp_path_factory.mktemp("ws")
    assets = tmp_path_factory.mktemp("assets")
    make_tokenizer(assets / "tokenizer")
    (assets / "model").mkdir()
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    parent = record_run(client, "ui-test", assets)
    exp_id = client.get_experiment_by_name("ui-test").experiment_id
    port = free_port()
    cmd = [sys.executable, "-m", "flows.cli", "ui", "--workspace", str(ws), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        first = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert first.startswith(f"MLflow UI at {url}"), first
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow ui did not answer /health"
                time.sleep(1)
        yield url, exp_id, parent, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the UI's own process group (its uvicorn workers included)
        proc.wait(timeout=30)


def test_rest_api_lists_the_parent_and_its_stage_runs(ui):
    url, exp_id, parent, _ = ui
    runs = get_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    assert tags[parent]["gptflow.kind"] == "pipeline"
    children = sorted(t["stage"] for t in tags.values() if t.get("mlflow.parentRunId") == parent)
    assert children == sorted(STAGES)


def rss_mib(pids: set[int]) -> float:
    """Resident memory of these processes together, MiB (those gone meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
        except (OSError, IndexError):
            continue
    return total / 1024


def test_ui_is_one_small_server(ui):
    """One uvicorn worker and no job runner: `mlflow ui`'s defaults start 14 processes (4 workers, a job runner,
    7 job consumers), 3 GB resident, for one person browsing one workspace. The job runner starts after the
    server, so the tree is watched for a few seconds."""
    *_, pid = ui
    for _ in range(6):
        tree = {pid} | descendants(pid)
        assert len(tree) <= 3, f"{len(tree)} processes under `gptflow ui`, {rss_mib(tree):.0f} MiB resident"
        time.sleep(0.5)


class Browser:
    """Just enough of the Chrome DevTools protocol: navigate, evaluate JS, screenshot."""

    def __init__(self, chromium: str, width: int, height: int):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="gptflow-chromium-")
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-port=0"]
        self.proc = subprocess.Popen(
            [chromium, *args, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:
            if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                break
        pages = get_json(f"http://127.0.0.1:{m.group(1)}/json/list")
        self.ws = connect(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                return msg.get("result", {})

    def eval(self, js: str):
        return self.send("Runtime.evaluate", expression=js, returnByValue=True).get("result", {}).get("value")

    def wait_for(self, js: str, timeout: float = 90) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.eval(js):
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, png: Path) -> Path:
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        print(f"screenshot: {png}")
        return png

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def test_experiment_page_shows_the_parent_run_with_its_stage_children(ui):
    from test_report import distinct_colours

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    url, exp_id, parent, _ = ui
    browser = Browser(chromium, 1600, 1000)
    try:
        browser.send("Page.navigate", url=f"{url}/#/experiments/{exp_id}/runs")
        assert browser.wait_for("document.body.innerText.includes('run-0')"), "runs table did not render"
        # the parent row's expander (MLflow's run-name cell button) shows the nested stage runs
        expander = "document.querySelector('button[data-component-id*=\"runnamecellrenderer\"]')"
        assert browser.wait_for(f"!!{expander}"), "no expander on the parent run's row"
        browser.eval(f"{expander}.click()")
        assert browser.wait_for("document.body.innerText.includes('evaluate[sst2]')"), "stage runs did not appear"
        text = browser.eval("document.body.innerText")
        png = browser.screenshot(OUTPUT / "mlflow_ui_runs.png")
    finally:
        browser.close()
    for stage in STAGES:
        assert stage in text, stage
    assert distinct_colours(png) > 50
