"""`notify:`: apprise messages from the pipeline flow's state hooks, to a JSON receiver on 127.0.0.1.

A stage that fails at compute time sends exactly one message naming it and its error; a finished
run (with `finish` in `on`) sends its headline figures; a receiver that cannot be reached is a
warning line and the run's outcome stands; a URL apprise does not know stops the run at load.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every JSON body POSTed to it (apprise's json://)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.messages.append(json.loads(body))
                received.headers.append(dict(self.headers))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, userinfo: str = "") -> str:
        return f"json://{userinfo}127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notify_sets(*urls: str, on: str = "[failure]") -> list[str]:
    quoted = ", ".join(f'"{u}"' for u in urls)
    return ["--set", f"notify.urls=[{quoted}]", "--set", f"notify.on={on}"]


def test_a_stage_failing_at_compute_time_sends_one_message(capsys, prefect_api, receiver, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")  # passes the checks before compute; the corpus stage finds no text
    argv = ["run", "--config", str(MICRO), "--workspace", str(tmp_path / "ws"), "--only", "corpus"]
    code = main([*argv, "--set", f"corpus.source={empty}", *notify_sets(receiver.url())])
    err = capsys.readouterr().err
    assert code == 2 and "no text" in err.strip().splitlines()[-1], err
    assert len(receiver.messages) == 1, receiver.messages
    (message,) = receiver.messages
    assert "run failed (gptflow-micro)" in message["title"] and message["type"] == "failure"
    first, run = message["message"].splitlines()[:2]
    assert first.startswith("stage 'corpus': ") and "no text" in first, first
    assert run.startswith("run: MLflow run ") and "gptflow report " in run, run  # the hint for a local store


def test_an_unreachable_receiver_is_a_warning_and_the_others_still_hear(capsys, prefect_api, receiver, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The king and the cat lived by the sea. " * 200)
    dead = f"json://127.0.0.1:{closed_port()}/hook"
    argv = ["run", "--config", str(MICRO), "--workspace", str(tmp_path / "ws"), "--only", "corpus"]
    code = main([*argv, "--set", f"corpus.source={text}", *notify_sets(dead, receiver.url(), on="[failure, finish]")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "gptflow: warning: notification to notify.urls[0] (json://***) was not delivered" in err
    assert len(receiver.messages) == 1 and "run finished" in receiver.messages[0]["title"]
    assert "run: MLflow run " in receiver.messages[0]["message"]


def test_an_unknown_url_is_refused_at_load_naming_it(capsys, tmp_path):
    ws = tmp_path / "ws"
    code = main(
        [
            "run",
            "--config",
            str(MICRO),
            "--workspace",
            str(ws),
            *notify_sets("json://127.0.0.1:9/ok", "bogus://me:s3cr3t@host/x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("gptflow: error: ")
        and "config key 'notify.urls[1]' (bogus://***) is not a notification" in last
    )
    assert "s3cr3t" not in err and "Traceback" not in err
    assert not (ws / "artifacts").exists()  # nothing computed


def test_yaml_on_key_and_outcomes_are_checked(tmp_path):
    from gpt.config.fields import ConfigError
    from gpt.config.loader import load_config

    config = tmp_path / "c.yaml"
    config.write_text("notify:\n  urls: ['json://127.0.0.1:9/hook']\n  on: [failure, finish]\n")  # YAML 1.1: on -> true
    assert load_config(config).notify.on == ["failure", "finish"]
    with pytest.raises(ConfigError, match=r"'notify.on\[0\]' must be one of failure \| finish"):
        load_config(None, ["notify.on=[done]"])


def test_sweep_trials_stay_quiet(monkeypatch):
    """A trial's pipeline run carries the sweep's tag: the sweep's own hook reports, once."""
    import flows.notify

    sent: list[str] = []
    monkeypatch.setattr(flows.notify, "send", lambda notify, title, body, failure=False: sent.append(title) or 1)
    config = {"notify": {"urls": ["json://127.0.0.1:9/hook"], "on": ["failure"]}}
    trial = SimpleNamespace(parameters={"config": config, "workspace": "/nowhere", "tags": {"sweep": "sweep-1"}})
    flows.notify.on_pipeline_failure(None, trial, None)  # type: ignore[arg-type]
    assert sent == []
    quiet = SimpleNamespace(parameters={"config": {"notify": {"urls": [], "on": ["failure"]}}, "workspace": "/x"})
    flows.notify.on_pipeline_failure(None, quiet, None)  # type: ignore[arg-type]
    assert sent == []


def test_a_failed_sweep_sends_one_message_naming_the_error(monkeypatch, receiver, tmp_path):
    """The sweep's own hook: the trial's one-line error and the compare command (no MLflow runs here)."""
    import flows.notify
    from flows.workspace import Workspace
    from gpt.config.loader import load_config
    from gpt.config.secrets import redacted_config
    from tasks.stage import StageError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(MICRO, ["sweep.params={finetune.lr: [0.001, 0.002]}", f'notify.urls=["{receiver.url()}"]'])
    store = (tmp_path / "mlruns").as_uri()  # an empty store: no sweep run to read back
    monkeypatch.setattr(Workspace, "tracking_uri", property(lambda ws: store))
    error = StageError("stage 'corpus': corpus source 'x.txt' produced no text")
    state = SimpleNamespace(message="Flow run encountered an exception", result=lambda raise_on_failure: error)
    export = {"config": redacted_config(cfg), "workspace": str(tmp_path)}
    monkeypatch.setenv("GPTFLOW_SECRETS", json.dumps({"notify.urls[0]": receiver.url()}))
    flows.notify.on_sweep_failure(None, SimpleNamespace(parameters=export), state)  # type: ignore[arg-type]
    (message,) = receiver.messages
    assert message["title"] == "gptflow: sweep failed (gptflow-micro)" and message["type"] == "failure"
    first, *_, last = message["message"].splitlines()
    assert first.startswith("sweep sweep-") and first.endswith(
        ": stage 'corpus': corpus source 'x.txt' produced no text"
    )
    assert last.startswith("compare: gptflow compare --sweep sweep-")


@pytest.mark.slow
def test_a_finished_run_sends_its_headline_figures(capsys, prefect_api, receiver, tmp_path):
    sets = ["--set", "finetune.tasks=[sst2]", *notify_sets(receiver.url(), on="[failure, finish]")]
    code = main(["run", "--config", str(MICRO), "--workspace", str(tmp_path / "ws"), *sets])
    err = capsys.readouterr().err
    assert code == 0, err
    assert len(receiver.messages) == 1, receiver.messages
    body = receiver.messages[0]["message"]
    assert "run finished (gptflow-micro)" in receiver.messages[0]["title"]
    assert "pretrain: val loss " in body and "sst2" in body and "accuracy " in body, body
    assert "report card: " in body and "report.html" in body, body
