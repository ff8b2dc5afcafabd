"""Credentials in URLs never leave the process (gpt/config/secrets.py).

Unit tests of the redaction, of keys that ignore credentials, of the real values coming back from
the environment; and one end-to-end run (slow) with credentials in the tracking URI, the corpus
source, a custom task's files and a notify URL, after which nothing the run wrote holds the secret.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import yaml
from test_notify import Receiver

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.config.secrets import (
    SECRETS_ENV,
    basic_auth,
    export_secrets,
    install_log_redaction,
    redact_data,
    redact_text,
    redact_url,
    redacted_config,
    reveal_config,
    reveal_url,
    scrub_exception,
    strip_credentials,
)

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
SECRET = "s3cr3t-token"
SHA = "ab" * 32


@pytest.mark.parametrize(
    "url, redacted, stripped",
    [
        (
            f"https://user:{SECRET}@host/c.txt#sha256={SHA}",
            "https://user:***@host/c.txt#sha256=",
            "https://host/c.txt#sha256=",
        ),
        (f"http://{SECRET}@127.0.0.1:5000", "http://***@127.0.0.1:5000", "http://127.0.0.1:5000"),
        (f"s3://key:{SECRET}@bucket/prefix", "s3://key:***@bucket/prefix", "s3://bucket/prefix"),
        (
            f"mailto://me:p@ss{SECRET}@example.org?to=a@b.org",
            "mailto://me:***@example.org?to=a@b.org",
            "mailto://example.org?to=a@b.org",
        ),
        ("json://127.0.0.1:8000/hook", "json://127.0.0.1:8000/hook", "json://127.0.0.1:8000/hook"),
        ("/data/x@y.txt", "/data/x@y.txt", "/data/x@y.txt"),
        ("https://host/path/@user", "https://host/path/@user", "https://host/path/@user"),
        ("https://user:***@host/x", "https://user:***@host/x", "https://host/x"),  # idempotent
    ],
)
def test_redact_and_strip_url(url, redacted, stripped):
    tail = f"{SHA}" if url.endswith(SHA) else ""
    assert redact_url(url) == redacted + tail and redact_text(url) == redacted + tail
    assert strip_credentials(url) == stripped + tail


def test_redact_text_finds_every_url_in_free_text():
    text = f"API request to http://u:{SECRET}@h:5000/api failed ('https://{SECRET}@x/y'), see json://127.0.0.1:9/"
    assert (
        redact_text(text)
        == "API request to http://u:***@h:5000/api failed ('https://***@x/y'), see json://127.0.0.1:9/"
    )
    data = {f"https://u:{SECRET}@h/a": [f"s3://k:{SECRET}@b/p", 3]}
    assert SECRET not in json.dumps(redact_data(data))


def test_basic_auth_takes_credentials_out_of_the_url():
    url, header = basic_auth(f"https://us%40er:{SECRET}@h:1/x.csv#sha256={SHA}")
    assert url == f"https://h:1/x.csv#sha256={SHA}"
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == f"us@er:{SECRET}"
    assert basic_auth("https://h/x") == ("https://h/x", None)


def secret_config(tmp_path: Path, user: str = "user", token: str = SECRET):
    overrides = [
        f"corpus.source=https://{user}:{token}@data.example/c.txt#sha256={SHA}",
        "finetune.tasks=[reviews]",
        f"tasks={{reviews: {{type: classification, train: 'https://{user}:{token}@data.example/t.csv#sha256={SHA}', "
        f"dev: 'https://{user}:{token}@data.example/d.csv#sha256={SHA}', "
        "columns: {text: text}, labels: [neg, pos]}}",
        f'notify.urls=["json://{user}:{token}@127.0.0.1:9/hook", "json://127.0.0.1:9/{token}"]',  # a token in a path
    ]
    return load_config(None, overrides)


def test_credentials_change_no_key_and_reach_no_record(tmp_path):
    """Keys hash the URL without its credentials: people with different tokens share every stage."""
    from tasks.plan import build_plan

    def plan(cfg):
        return {s.name: s for s in build_plan(cfg, tmp_path / "artifacts")}

    alice, bob = plan(secret_config(tmp_path)), plan(secret_config(tmp_path, "bob", "other-token"))
    assert {n: s.section_digest() for n, s in alice.items()} == {n: s.section_digest() for n, s in bob.items()}
    assert alice["corpus"].key == bob["corpus"].key
    for stage in alice.values():  # what manifests, partial records and latest-*.json hold
        assert SECRET not in json.dumps(stage.inputs_record() if stage.name == "corpus" else stage.section_record())
    assert secret_config(tmp_path).digest() == secret_config(tmp_path, "bob", "other-token").digest()


def test_params_and_flow_parameters_are_redacted_and_the_flow_gets_the_real_values(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    cfg = secret_config(tmp_path)
    params, parameter = cfg.flat(), redacted_config(cfg)
    assert SECRET not in json.dumps(params) and SECRET not in json.dumps(parameter)
    assert params["corpus.source"] == f"https://user:***@data.example/c.txt#sha256={SHA}"
    assert parameter["notify"]["urls"] == ["json://***", "json://***"]  # a webhook's path may be its token
    with pytest.raises(ConfigError, match=r"config key 'corpus.source' holds a redacted credential"):
        reveal_config(parameter)  # no GPTFLOW_SECRETS in this process
    export_secrets(cfg)
    assert SECRET in os.environ[SECRETS_ENV]
    assert reveal_config(parameter) == cfg.to_dict()
    other = secret_config(tmp_path, "bob", "other-token")  # a different config's redacted form is left alone
    with pytest.raises(ConfigError, match="holds a redacted credential"):
        reveal_config(redacted_config(other))


def test_the_tracking_uri_comes_back_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:5000")
    assert reveal_url("http://user:***@127.0.0.1:5000") == f"http://user:{SECRET}@127.0.0.1:5000"
    assert reveal_url("http://user:***@elsewhere:5000") == "http://user:***@elsewhere:5000"


def test_the_pretrain_worker_spec_holds_no_credentials(tmp_path, monkeypatch):
    from gpt.model.config import ModelConfig
    from gpt.train.config import PretrainConfig
    from tasks.definition import StageEnv
    from tasks.pretrain_job import PretrainJob, PretrainSection

    cfg = secret_config(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:5000")
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    export_secrets(cfg)
    section = PretrainSection(ModelConfig(), PretrainConfig(), 1, "cpu", 8, scored_custom=dict(cfg.tasks))
    env = StageEnv("pretrain", "run", os.environ["MLFLOW_TRACKING_URI"], tmp_path)
    job = PretrainJob(section, tmp_path, tmp_path, tmp_path, env)
    spec = job.to_json()
    assert SECRET not in spec and "user:***@" in spec
    back = PretrainJob.from_json(spec)  # the worker's env has the real values
    assert back.env.tracking_uri == env.tracking_uri and back.section.scored_custom == section.scored_custom


def test_a_store_with_credentials_is_not_an_artifact_root(tmp_path, monkeypatch):
    from flows.workspace import Workspace

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GPTFLOW_STORE", f"https://user:{SECRET}@store.example/gptflow")
    assert Workspace(tmp_path).artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_log_records_and_exceptions_are_redacted():
    install_log_redaction()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("gptflow.test_secrets")
    log.addHandler(handler)
    try:
        log.warning("reused from %s", f"https://u:{SECRET}@store/x")
        try:
            raise RuntimeError(f"API request to http://u:{SECRET}@h/api failed")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = "\n".join(logging.Formatter().format(r) for r in records)
    assert SECRET not in text and "https://u:***@store/x" in text and "http://u:***@h/api" in text
    error = scrub_exception(ValueError(f"bad https://{SECRET}@h/x"))
    assert str(error) == "bad https://***@h/x"


def test_gptflow_config_masks_credentials(capsys):
    from flows.cli import main

    url = f"https://user:{SECRET}@h/c.txt#sha256={SHA}"
    assert main(["config", "--set", f"corpus.source={url}", "--set", f'notify.urls=["json://u:{SECRET}@h:9/x"]']) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "https://user:***@h/c.txt" in out and "[json://***]" in out


class AuthFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a directory to requests with the expected basic auth only; records what it was sent."""

    expected = ""
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != self.expected:
            self.send_error(401)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def serve_files(root: Path, tls: tuple[Path, Path] | None = None):
    """(server, its base URL with `user:s3cr3t-token@`, its handler class recording the auth it was sent)."""
    expected = f"Basic {base64.b64encode(f'user:{SECRET}'.encode()).decode()}"
    handler = type("Handler", (AuthFiles,), {"expected": expected, "seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"{scheme}://user:{SECRET}@127.0.0.1:{httpd.server_address[1]}", handler


def test_download_sends_basic_auth_and_never_names_the_token(tmp_path):
    from gpt.data.sources import SourceError, download

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.txt").write_text("hello")
    httpd, base, _ = serve_files(tmp_path / "www")
    try:
        sha = hashlib.sha256(b"hello").hexdigest()
        assert download(f"{base}/f.txt", sha, tmp_path / "cache").read_text() == "hello"
        with pytest.raises(SourceError) as bad:
            download(f"{base}/f.txt", "0" * 64, tmp_path / "cache")
        assert SECRET not in str(bad.value) and "user:***@127.0.0.1" in str(bad.value)
        with pytest.raises(SourceError) as missing:
            download(f"{base}/nope.txt", "1" * 64, tmp_path / "cache")
        assert SECRET not in str(missing.value) and "404" in str(missing.value)
    finally:
        httpd.shutdown()


# --- end to end -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_a_run_with_credentials_everywhere_writes_them_nowhere(tmp_path):
    """Tracking URI (an MLflow server), corpus source and task files (https with basic auth) and a notify
    URL all carry `user:s3cr3t-token@`: the run succeeds, and no file it wrote, no MLflow or Prefect
    database and no line it printed holds the token."""
    tracking = tmp_path / "mlflow-server"
    tracking.mkdir()
    port = free_port()
    server_log = open(tracking / "server.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
        + [
            "--backend-store-uri",
            f"sqlite:///{tracking / 'mlflow.db'}",
            "--artifacts-destination",
            str(tracking / "art"),
        ]
        + ["--workers", "1"],
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    www = tmp_path / "www"
    www.mkdir()
    mirror = Path(os.environ.get("GPTFLOW_MIRROR") or ROOT.parent / "shared" / "data")
    shutil.copy(mirror / "tinyshakespeare" / "input.txt", www / "input.txt")
    for split, n in (("train", 64), ("dev", 32)):
        rows = "".join(
            f"{'a fine' if i % 2 else 'a dull'} film number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n)
        )
        (www / f"{split}.csv").write_text("text,label\n" + rows)
    cert, key = self_signed(tmp_path)
    files, base, handler = serve_files(www, (cert, key))
    receiver = Receiver()

    def url(name: str) -> str:
        return f"{base}/{name}#sha256={hashlib.sha256((www / name).read_bytes()).hexdigest()}"

    config = yaml.safe_load(MICRO.read_text())
    config["experiment"] = "gptflow-secrets"
    config["corpus"]["source"] = url("input.txt")
    config["finetune"]["tasks"] = ["reviews"]
    config["tasks"] = {
        "reviews": {"type": "classification", "train": url("train.csv"), "dev": url("dev.csv")}
        | {"columns": {"text": "text"}, "labels": ["neg", "pos"]}
    }
    config["notify"] = {"urls": [receiver.url(f"user:{SECRET}@")], "on": ["failure", "finish"]}
    (tmp_path / "cfg").mkdir()
    config_file = tmp_path / "cfg" / "secret.yaml"  # the user's own file: the one place the token may be
    config_file.write_text(yaml.safe_dump(config))
    ws = tmp_path / "ws"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"http://user:{SECRET}@127.0.0.1:{port}",
        "SSL_CERT_FILE": str(cert),
        "PREFECT_LOGGING_LEVEL": "INFO",  # everything Prefect logs is searched too
    }
    # An earlier in-process CLI run leaves its own workspace's Prefect home in os.environ; this run
    # keeps Prefect's database in its own workspace, where the leak search below looks.
    for key in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH"):
        env.pop(key, None)
    try:
        deadline = time.monotonic() + 180
        import httpx

        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
        run = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(config_file), "--workspace", str(ws)],
            cwd=tmp_path,
            capture_output=True,
            env=env,
            timeout=900,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        server_log.close()
        files.shutdown()
        receiver.close()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output.decode(errors="replace")[-4000:]
    assert f"user:***@127.0.0.1:{port}".encode() in run.stdout  # the store it names, redacted

    # the credentials did their job: downloads authenticated, the receiver heard the run finish
    assert handler.seen and set(handler.seen) == {handler.expected}
    (message,) = receiver.messages
    assert "run finished" in message["title"] and "reviews" in message["message"]
    assert f"http://127.0.0.1:{port}/#/experiments/" in message["message"]  # the run's MLflow URL, no credentials

    needle = SECRET.encode()
    assert list(ws.rglob("prefect.db")) and list((ws / "artifacts").glob("corpus/*/manifest.json"))
    leaks = {
        "printed": [line for line in output.decode(errors="replace").splitlines() if SECRET in line],
        "workspace": files_holding(ws, needle),  # stage dirs, manifests, Prefect's database and logs
        "tracking server": files_holding(tracking, needle),  # its database, artifacts and log
    }
    assert leaks == {"printed": [], "workspace": [], "tracking server": []}
