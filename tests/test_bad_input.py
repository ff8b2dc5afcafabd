"""The bad-input matrix: every case through the real CLI, exit code 2, one line naming the culprit,
no traceback, and nothing already complete in the workspace touched.

Cases run in-process (`flows.cli.main`) against one temporary Prefect API for the module, on a
workspace where corpus, tokenizer and encode of the micro config are already done.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from flows.cli import main
from gpt.config.loader import load_config
from tasks.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.yaml"
DATA_STAGES = "corpus,tokenizer,encode"


@pytest.fixture(scope="module")
def done_ws(prefect_api, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    assert main(["run", "--config", str(MICRO), "--workspace", str(ws), "--only", DATA_STAGES]) == 0
    return ws


def snapshot(ws: Path) -> dict[str, tuple[int, int]]:
    """Every file of every completed stage directory: (size, mtime)."""
    return {
        str(p.relative_to(ws)): (p.stat().st_size, p.stat().st_mtime_ns)
        for manifest in (ws / "artifacts").glob("*/*/manifest.json")
        for p in manifest.parent.rglob("*")
        if p.is_file()
    }


def fails(capsys, ws: Path, *args: str, needle: str, config: Path = MICRO) -> str:
    """Run the CLI; assert exit 2, a final `gptflow: error:` line containing `needle`, no traceback, nothing touched."""
    before = snapshot(ws)
    capsys.readouterr()
    code = main(["run", "--config", str(config), "--workspace", str(ws), *args])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2, err
    assert last.startswith("gptflow: error:") and needle in last, last
    assert "Traceback" not in err
    assert snapshot(ws) == before
    return last


CONFIG_CASES = {
    "unknown_key": (["--set", "model.n_layerz=2"], "unknown config key 'model.n_layerz'"),
    "wrong_type": (["--set", "pretrain.max_steps=lots"], "'pretrain.max_steps' must be an integer, got 'lots'"),
    "negative_lr": (["--set", "pretrain.lr=-0.1"], "'pretrain.lr' must be > 0, got -0.1"),
    "dropout_ge_1": (["--set", "model.dropout=1.0"], "'model.dropout' must be in [0, 1)"),
    "vocab_below_bytes": (["--set", "tokenizer.vocab_size=200"], "'tokenizer.vocab_size' must be in [257, 65000]"),
    "n_embd_not_divisible": (["--set", "model.n_embd=30", "--set", "model.n_head=4"], "must be divisible"),
    "max_len_over_block_size": (["--set", "finetune.max_len=128"], "exceeds 'model.block_size' (64)"),
    "missing_corpus_file": (["--set", "corpus.source=/nowhere/corpus.txt"], "corpus source not found"),
    "url_without_sha256": (["--set", "corpus.source=https://example.org/c.txt"], "needs a checksum"),
    "unknown_task": (["--set", "finetune.tasks=[sst2, nope]"], "unknown task 'nope'"),
    "unknown_stage": (["--only", "pretrian"], "unknown stage 'pretrian'"),
    "mlflow_unreachable": ([], "MLflow tracking server http://127.0.0.1:9 (MLFLOW_TRACKING_URI) is unreachable"),
    "devices_not_a_count": (["--set", "pretrain.devices=two"], "'pretrain.devices' must be auto, a count"),
    "unknown_precision": (["--set", "pretrain.precision=bogus"], "'pretrain.precision' must be auto | 32-true"),
    "negative_seed": (["--set", "seed=-1"], "config key 'seed' must be in [0, 4294967295], got -1"),
    "infinite_lr": (["--set", "pretrain.lr=inf"], "'pretrain.lr' must be > 0, got inf"),
    "infinite_weight_decay": (["--set", "pretrain.weight_decay=inf"], "'pretrain.weight_decay' must be >= 0, got inf"),
    "negative_grad_clip": (["--set", "pretrain.grad_clip=-1"], "'pretrain.grad_clip' must be >= 0, got -1.0"),
    "huge_block_size": (["--set", "model.block_size=1000000000"], "'model.block_size' must be in [8, 65536]"),
    "experiment_with_a_slash": (["--experiment", "team/x"], "config key 'experiment' must be a name without '/'"),
    "empty_only": (["--only", ""], "--only names no stage"),
    "https_corpus_sha256_not_hex": (
        ["--set", "corpus.source=https://example.org/c.txt#sha256=xyz"],
        "config key 'corpus.source': https source https://example.org/c.txt: '#sha256=xyz' is not a sha256",
    ),
    "store_of_an_unknown_user": (
        ["--store", "~nosuchuser/x"],
        "--store / GPTFLOW_STORE: cannot resolve '~nosuchuser/x'",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_case(case, capsys, done_ws, monkeypatch):
    args, needle = CONFIG_CASES[case]
    if case == "mlflow_unreachable":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    fails(capsys, done_ws, *args, needle=needle)


def test_malformed_yaml(capsys, done_ws, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: 2\n  n_head: [1,\n")
    last = fails(capsys, done_ws, needle=str(bad), config=bad)
    assert "line" in last and "not valid YAML" in last


def test_from_needs_finished_upstream(capsys, tmp_path):
    fails(capsys, tmp_path, "--from", "pretrain", needle="needs 'encode', which is not done")


def custom_task(tmp_path: Path, header: str, rows: list[str], ext: str = "tsv", extra: str = "") -> Path:
    """A config whose only task is the custom task `mood` over train/dev files of `header` and `rows`;
    `extra` is more YAML for the task (indented 4)."""
    for split in ("train", "dev"):
        (tmp_path / f"{split}.{ext}").write_text("\n".join([header, *rows]) + "\n")
    cfg = tmp_path / "custom.yaml"
    cfg.write_text(
        MICRO.read_text().replace("tasks: [sst2, story_cloze]", "tasks: [mood]")
        + f"tasks:\n  mood:\n    type: classification\n    train: {tmp_path}/train.{ext}\n"
        f"    dev: {tmp_path}/dev.{ext}\n    columns: {{text: sentence}}\n    labels: [sad, happy]\n{extra}"
    )
    return cfg


def test_tsv_missing_a_column(capsys, done_ws, tmp_path):
    cfg = custom_task(tmp_path, "text\tlabel", ["a fine day\thappy", "rain\tsad"])
    fails(capsys, done_ws, needle="no column 'sentence'", config=cfg)


def test_label_outside_the_label_set(capsys, done_ws, tmp_path):
    cfg = custom_task(tmp_path, "sentence\tlabel", ["a fine day\thappy", "rain\tmaybe"])
    last = fails(capsys, done_ws, needle="train.tsv:3", config=cfg)
    assert "maybe" in last


def test_custom_task_unknown_encoding(capsys, done_ws, tmp_path):
    cfg = custom_task(tmp_path, "sentence\tlabel", ["a fine day\thappy"], extra="    encoding: klingon\n")
    fails(capsys, done_ws, needle="config key 'tasks.mood.encoding': 'klingon' is not a text encoding", config=cfg)


def test_custom_task_named_like_a_registry_suffix(capsys, done_ws, tmp_path):
    cfg = custom_task(tmp_path, "sentence\tlabel", ["a fine day\thappy", "rain\tsad"])
    cfg.write_text(cfg.read_text().replace("mood", "pretrained"))
    fails(capsys, done_ws, needle="config key 'tasks.pretrained' is reserved", config=cfg)


def test_custom_task_https_sha256_not_hex(capsys, done_ws, tmp_path):
    cfg = custom_task(tmp_path, "sentence\tlabel", ["a fine day\thappy", "rain\tsad"])
    cfg.write_text(
        cfg.read_text().replace(f"train: {tmp_path}/train.tsv", "train: https://example.org/t.tsv#sha256=abc")
    )
    fails(capsys, done_ws, needle="config key 'tasks.mood.train': an https file needs '#sha256=<64 hex", config=cfg)


def test_csv_field_over_the_csv_field_size_limit(capsys, done_ws, tmp_path):
    import csv

    big = "x" * (csv.field_size_limit() + 1)
    cfg = custom_task(tmp_path, "sentence,label", [f'"{big}",happy', "rain,sad"], ext="csv")
    last = fails(capsys, done_ws, needle=f"{tmp_path / 'train.csv'}:2:", config=cfg)
    assert "field larger than field limit" in last and big not in last


def test_csv_duplicate_header_column(capsys, done_ws, tmp_path):
    cfg = custom_task(tmp_path, "sentence,label,sentence", ["a fine day,happy,x", "rain,sad,y"], ext="csv")
    fails(capsys, done_ws, needle=f"{tmp_path / 'train.csv'}:1: column 'sentence' appears twice", config=cfg)


def test_config_file_not_utf8(capsys, done_ws, tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(MICRO.read_bytes().replace(b"experiment: gptflow-micro", b"experiment: caf\xe9"))
    fails(capsys, done_ws, needle=f"{bad}: not UTF-8 text", config=bad)


@pytest.mark.parametrize(
    ("yaml_text", "key"), [("1: x\n", "1"), ("model:\n  n_layer: 2\n  2: x\n", "model.2")], ids=["top", "section"]
)
def test_yaml_key_not_a_name(capsys, done_ws, tmp_path, yaml_text, key):
    bad = tmp_path / "keys.yaml"
    bad.write_text(yaml_text)
    fails(capsys, done_ws, needle=f"{bad}: config key '{key}' must be a name, got int", config=bad)


@pytest.mark.parametrize("model_dir", ["empty", "broken_config_json"])
def test_finetune_init_not_a_model_dir(capsys, done_ws, tmp_path, model_dir):
    init = tmp_path / model_dir
    init.mkdir()
    if model_dir == "broken_config_json":
        (init / "config.json").write_text('{"n_layer": ')
    last = fails(capsys, done_ws, "--set", f"finetune.init={init}", needle="config key 'finetune.init'")
    assert f"{init}/config.json" in last


def test_stages_refuses_a_finetune_init_that_is_not_a_model(capsys, tmp_path):
    """`gptflow stages` plans without computing; it must not hash a whole folder that holds no model."""
    capsys.readouterr()
    code = main(
        ["stages", "--config", str(MICRO), "--workspace", str(tmp_path / "ws"), "--set", f"finetune.init={tmp_path}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("gptflow: error: config key 'finetune.init'"), err
    assert "is not a gptflow model directory" in err[-1]


@pytest.mark.parametrize("corpus", ["few_bytes_of_text", "few_bytes_of_binary_garbage", "capped_by_max_bytes"])
def test_corpus_too_small_for_one_window(capsys, done_ws, tmp_path, corpus):
    """Local text files whose bytes (capped by corpus.max_bytes) cannot make one train and one val window."""
    source = tmp_path / "tiny.txt"
    source.write_bytes(
        {"few_bytes_of_text": b"To be.\n", "capped_by_max_bytes": b"To be, or not.\n" * 100}.get(corpus, os.urandom(10))
    )
    sets = ["--set", f"corpus.source={source}"]
    if corpus == "capped_by_max_bytes":
        sets += ["--set", "corpus.max_bytes=20"]
    last = fails(capsys, done_ws, *sets, needle="config key 'corpus.source': the corpus files hold")
    assert "model.block_size 64 need 130" in last and "a smaller model.block_size" in last


@pytest.mark.parametrize("command", ["stages", "compare", "run"])
def test_gptflow_home_is_a_file(capsys, tmp_path, monkeypatch, command):
    home = tmp_path / "home"
    home.write_text("not a workspace")
    monkeypatch.setenv("GPTFLOW_HOME", str(home))
    capsys.readouterr()
    code = main([command] if command == "compare" else [command, "--config", str(MICRO)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"gptflow: error: workspace {home} (GPTFLOW_HOME) is not a directory"), err
    assert home.read_text() == "not a workspace"


@pytest.mark.parametrize("command", ["compare", "run"])
def test_corrupt_mlflow_db(capsys, done_ws, tmp_path, monkeypatch, command):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = copy_ws(done_ws, tmp_path / "ws")
    db = ws / "mlflow.db"
    garbage = b"not sqlite" + os.urandom(4096)
    db.write_bytes(garbage)
    needle = f"MLflow store {db} is not a usable SQLite database"
    if command == "run":
        fails(capsys, ws, needle=needle)
    else:
        capsys.readouterr()
        code = main(["compare", "--workspace", str(ws), "--out", str(tmp_path / "compare.html")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("gptflow: error: ") and needle in err[0], err
        assert not (tmp_path / "compare.html").exists()
    assert db.read_bytes() == garbage


def test_workspace_on_a_read_only_path(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits; the immutable flag stops it
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
            pytest.skip("chattr +i not available")
    else:
        ro.chmod(0o555)
    try:
        capsys.readouterr()
        code = main(["run", "--config", str(MICRO), "--workspace", str(ro / "ws")])
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            code == 2 and len(err) == 1 and err[0].startswith(f"gptflow: error: workspace {ro / 'ws'} is not writable")
        )
        assert not (ro / "ws").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)])
        else:
            ro.chmod(0o755)


def copy_ws(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "artifacts", dst / "artifacts")
    return dst


def test_stage_dir_of_a_different_config(capsys, done_ws, tmp_path):
    ws = copy_ws(done_ws, tmp_path / "ws")
    ours = {s.name: s for s in build_plan(load_config(MICRO), ws / "artifacts")}["corpus"]
    theirs = {s.name: s for s in build_plan(load_config(MICRO, ["corpus.max_bytes=1000"]), ws / "artifacts")}["corpus"]
    shutil.copytree(ours.dir, theirs.dir)
    fails(capsys, ws, "--set", "corpus.max_bytes=1000", "--only", "corpus", needle="belongs to key")


def test_truncated_token_shard(capsys, done_ws, tmp_path):
    ws = copy_ws(done_ws, tmp_path / "ws")
    (shard,) = (ws / "artifacts" / "encode").glob("*/train.bin")
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    last = fails(capsys, ws, needle="stage 'encode' output")
    assert "train.bin has" in last and "--rebuild encode" in last


# --- cases that fail inside a stage (the Prefect flow runs; the stage ends in a BadInput state) ---


def test_empty_corpus(capsys, done_ws, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails(capsys, done_ws, "--set", f"corpus.source={empty}", "--only", "corpus", needle="no text")


def test_corpus_too_small_for_a_window_fails_in_pretrain(capsys, prefect_api, tmp_path):
    """Big enough to pass the planning bound, too small once tokenized: one line from the pretrain stage,
    before any training (the data stages it needed are done and kept)."""
    words = ("the", "king", "cat", "sea", "told", "of", "a", "and", "lived", "by")
    small = tmp_path / "small.txt"
    small.write_text(" ".join(words[i * 7 % 10] for i in range(120)) + "\n")  # ~500 bytes, one document
    ws = tmp_path / "ws"
    sets = ["--set", f"corpus.source={small}"]
    capsys.readouterr()
    code = main(["run", "--config", str(MICRO), "--workspace", str(ws), *sets, "--only", f"{DATA_STAGES},pretrain"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("gptflow: error: stage 'pretrain': the ") and " split has " in last, last
    assert "one window of model.block_size 64 needs 66" in last and "a smaller model.block_size" in last
    (pretrain,) = [s for s in build_plan(load_config(MICRO, sets[1:]), ws / "artifacts") if s.name == "pretrain"]
    assert not pretrain.is_done()


def test_binary_garbage_corpus_is_cleaned_not_a_crash(capsys, done_ws, tmp_path):
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(os.urandom(20_000))
    before = snapshot(done_ws)
    assert (
        main(
            [
                "run",
                "--config",
                str(MICRO),
                "--workspace",
                str(done_ws),
                "--set",
                f"corpus.source={garbage}",
                "--only",
                "corpus",
            ]
        )
        == 0
    )
    (stage,) = [
        s
        for s in build_plan(load_config(MICRO, [f"corpus.source={garbage}"]), done_ws / "artifacts")
        if s.name == "corpus"
    ]
    assert stage.manifest()["summary"]["bad_bytes_replaced"] > 0
    assert {k: v for k, v in snapshot(done_ws).items() if k in before} == before


@pytest.fixture
def https_server(tmp_path, monkeypatch):
    """A TLS file server on 127.0.0.1 with a throwaway certificate the client trusts via SSL_CERT_FILE."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    yield root, f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_checksum_mismatch(capsys, done_ws, https_server):
    root, url = https_server
    (root / "book.txt").write_text("To be, or not to be.\n" * 50)
    wrong = hashlib.sha256(b"something else").hexdigest()
    last = fails(
        capsys,
        done_ws,
        "--set",
        f"corpus.source={url}/book.txt#sha256={wrong}",
        "--only",
        "corpus",
        needle="checksum mismatch",
    )
    assert wrong in last and "stage 'corpus'" in last


def test_disk_full_while_writing_a_stage(capsys, done_ws, monkeypatch, tmp_path):
    import gpt.data.corpus

    def full(source, out_file, *args, **kwargs):
        Path(out_file).write_text('{"text": "half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_file))

    monkeypatch.setattr(gpt.data.corpus, "build_corpus", full)
    other = ["--set", "corpus.max_bytes=12345", "--only", "corpus"]
    fails(capsys, done_ws, *other, needle="No space left on device")
    (stage,) = [s for s in build_plan(load_config(MICRO, other[1:2]), done_ws / "artifacts") if s.name == "corpus"]
    assert not stage.is_done() and stage.partial_dir.exists()  # left partial, never committed


def test_cli_subprocess_bad_input_is_one_line(tmp_path):
    """The same contract through a real process (the `gptflow` entry point's module)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--config",
            str(MICRO),
            "--workspace",
            str(tmp_path),
            "--set",
            "model.dropout=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("gptflow: error: ") and "config key 'model.dropout' must be in [0, 1)" in lines[0]


@pytest.mark.slow
def test_corrupt_checkpoint_is_set_aside_and_training_restarts(capsys, done_ws):
    """My call for this case: not an error. A truncated `last.ckpt` (a kill mid-save) is moved aside,
    named in a warning, and the stage trains from step 0."""
    sets = ["pretrain.max_steps=4", "pretrain.ckpt_every=2", "pretrain.val_every=2"]
    (pretrain,) = [s for s in build_plan(load_config(MICRO, sets), done_ws / "artifacts") if s.name == "pretrain"]
    (pretrain.partial_dir / "checkpoints").mkdir(parents=True)
    (pretrain.partial_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04" + os.urandom(5000))
    before = snapshot(done_ws)
    args = ["run", "--config", str(MICRO), "--workspace", str(done_ws), "--only", "pretrain"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    assert (pretrain.partial_dir.parent / f"{pretrain.key}.last.ckpt.corrupt").is_file()
    summary = pretrain.manifest()["summary"]
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 4
    assert {k: v for k, v in snapshot(done_ws).items() if k in before} == before
