"""Shared fixtures: a private workspace per test, and the micro config the end-to-end tests run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from stack_fixture import team_servers  # noqa: F401 - the team stack (gptflow servers up), for -m servers

from gpt.data.shards import encode_corpus
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, train_bpe

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect logs "Stopping temporary server" at exit, after pytest has closed its capture streams.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture
def micro_config() -> Path:
    return MICRO



TRACKING_URI_AT_START = os.environ.get("MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """Lightning's MLFlowLogger sets MLflow's process-global tracking URI (and its env var); undo it after each test.

    Reset to the value at start, not before the test: a module-scoped fixture that ran the pipeline
    in-process has already leaked its URI when this fixture starts, and subprocesses inherit it.
    """
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(TRACKING_URI_AT_START)  # None clears both the global and the variable


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> tuple[Path, int]:
    """Token shards of a small story corpus with a 300-rank BPE: (shard dir, vocab size), for training tests."""
    d = tmp_path_factory.mktemp("shards")
    docs = [f"Once upon a time, story {i} told of a king and a cat who lived by the sea." * 8 for i in range(40)]
    (d / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    enc = build_encoding(train_bpe(docs, 300), SPLIT_PATTERN)
    encode_corpus(d / "corpus.jsonl", enc, d, 0.1, seed=0)
    return d, enc.n_vocab


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One temporary Prefect API for the whole module (each CLI run would otherwise start its own)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.api_server import drain_clients, start_server, stop_server

    home = tmp_path_factory.mktemp("prefect")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH")}
    os.environ.update(PREFECT_HOME=str(home), PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"))
    proc, url = start_server(120)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
            drain_clients()
    finally:
        stop_server(proc)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
