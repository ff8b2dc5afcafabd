"""`gptflow config`: the key reference is generated from the dataclasses, covers every key, and is cheap."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from cli_helpers import gptflow

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.config.reference import config_reference, filter_rows, render_markdown

ROOT = Path(__file__).resolve().parents[1]

# Every mapping and list of sections populated: a custom task, per-task overrides, a source mixture.
POPULATED = [
    "finetune.tasks=[sst2, reviews]",
    "finetune.per_task={sst2: {lr: 0.001, select_best: true}}",
    "tasks={reviews: {type: classification, train: a.csv, dev: b.csv, columns: {text: t}, labels: [neg, pos]}}",
    "builtin_tasks={story_cloze: {test: cloze_test.csv}}",
    "corpus.sources=[{source: tinyshakespeare, weight: 2}, {source: gutenberg}]",
    "ablations=[no_aux_lm]",
    "sweep.params={finetune.lr: [0.001, 0.002]}",
]


def leaves(value: object, prefix: str) -> dict[str, object]:
    """Dotted leaf keys of a plain config dict, descending into lists of sections as `key[i].field`."""
    if isinstance(value, dict) and prefix != "sweep.params":  # its keys are dotted config keys: one leaf
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(leaves(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def pattern(key: str) -> re.Pattern[str]:
    """A reference key as a pattern over concrete keys: `<name>` matches one name, `[]` one index."""
    return re.compile(re.sub(r"\\\[\\\]", r"\\[\\d+\\]", re.sub(r"<[a-z_]+>", r"[^.]+", re.escape(key))) + "$")


def test_every_leaf_of_a_populated_config_is_in_the_reference():
    cfg = load_config(None, POPULATED)
    rows = config_reference()
    patterns = [pattern(r.key) for r in rows if r.leaf]
    keys = leaves(cfg.to_dict(), "")
    assert len(keys) > 90  # the walk reached the task, the overrides and the sources
    missing = [k for k in keys if not any(p.fullmatch(k) for p in patterns)]
    assert not missing, f"config keys absent from `gptflow config`: {missing}"
    # and no leaf row is made up: each names a key the config has
    unused = [r.key for r in rows if r.leaf and not any(pattern(r.key).fullmatch(k) for k in keys)]
    assert not unused, unused


def test_the_default_flat_config_is_covered_row_for_row():
    leaf_keys = {r.key for r in config_reference() if r.leaf}
    containers = {r.key for r in config_reference() if not r.leaf}
    for key in ExperimentConfig().flat():
        assert key in leaf_keys or key in containers, key


def test_every_field_of_every_section_has_a_doc():
    seen: set[type] = set()

    def sections(cls: typing.Any) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc", "").strip(), f"{cls.__name__}.{f.name} has no doc"
            for tp in (typing.get_type_hints(cls)[f.name], *typing.get_args(typing.get_type_hints(cls)[f.name])):
                if dataclasses.is_dataclass(tp):
                    sections(tp)

    sections(ExperimentConfig)
    assert len(seen) >= 10  # every section, FinetuneOverrides and the task columns included
    assert all(r.doc.strip() for r in config_reference())


def test_rows_carry_type_default_requirement_and_role():
    rows = {r.key: r for r in config_reference()}
    lr = rows["pretrain.lr"]
    assert (lr.type, lr.default, lr.requirement, lr.role) == ("float", "0.00025", "> 0", None)
    assert rows["pretrain.val_every"].role == "observation"
    assert rows["fanout.max_concurrency"].role == "placement"  # fanout's fields are placement
    assert rows["model.norm"].requirement == "post | pre"  # a Literal's choices
    assert rows["finetune.per_task.<task>.lr"].type == "float | null"
    assert rows["tasks.<name>.type"].default == "(required)"
    assert rows["tasks.<name>.columns.context"].type == "str | list[str] | null"
    assert rows["builtin_tasks.<name>.test"].type == "str | null"
    assert rows["corpus.sources[].weight"].default == "1.0"
    assert rows["finetune.tasks"].default == "[sst2, story_cloze]"


def test_resolved_values_sit_beside_the_defaults():
    rows = {r.key: r for r in config_reference(load_config(None, [*POPULATED, "pretrain.lr=1e-3"]))}
    assert rows["pretrain.lr"].value == "0.001" and rows["pretrain.lr"].default == "0.00025"
    assert rows["tasks.<name>.type"].value == "reviews: classification"
    assert rows["finetune.per_task.<task>.lr"].value == "sst2: 0.001"
    assert rows["corpus.sources[].weight"].value == "[0]: 2.0, [1]: 1.0"


def test_section_filter():
    rows = filter_rows(config_reference(), "fanout")
    assert [r.key for r in rows][0] == "fanout" and all(r.key.startswith("fanout") for r in rows)
    assert {r.key for r in filter_rows(config_reference(), "corpus.sources")} == {
        "corpus.sources",
        "corpus.sources[].source",
        "corpus.sources[].weight",
    }
    with pytest.raises(ConfigError, match="no config key 'pretrian'"):
        filter_rows(config_reference(), "pretrian")


def test_markdown_is_a_table():
    lines = render_markdown(filter_rows(config_reference(), "model")).splitlines()
    assert lines[0].startswith("| key | type | default |") and set(lines[1]) <= set("|-")
    body = [line for line in lines[2:] if line.startswith("|")]
    assert len(body) == len(filter_rows(config_reference(), "model"))
    ncols = lines[0].count(" | ") + 1
    # pipes inside cells (`post | pre`) are escaped, so every row has the header's columns
    assert all(len(re.split(r"(?<!\\)\|", row)) - 2 == ncols for row in body)


def test_cli_prints_every_key_with_its_default():
    proc = gptflow("config")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("pretrain.lr "))
    assert "float" in line.split() and "0.00025" in line.split() and "peak learning rate" in line
    assert "tasks.<name>.type" in proc.stdout and "corpus.sources[].source" in proc.stdout


def test_cli_section_filter_markdown_and_values(tmp_path):
    proc = gptflow("config", "pretrain")
    assert proc.returncode == 0, proc.stderr
    keys = [ln.split()[0] for ln in proc.stdout.splitlines()[1:] if ln.strip() and not ln.startswith("role:")]
    assert "pretrain.lr" in keys and all(k.startswith("pretrain") for k in keys)

    md = gptflow("config", "model", "--markdown")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("| key | type | default | role | doc |\n|---|") and "| `model.n_layer` |" in md.stdout

    cfg = tmp_path / "c.yaml"
    cfg.write_text("pretrain:\n  max_steps: 7\n")
    proc = gptflow("config", "pretrain.max_steps", "--config", str(cfg), "--set", "pretrain.lr=1e-3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:5] == ["key", "type", "default", "value", "role"]
    assert proc.stdout.splitlines()[1].split()[:4] == ["pretrain.max_steps", "int", "200", "7"]

    bad = gptflow("config", "pretrian")
    assert bad.returncode == 2 and bad.stderr.startswith("gptflow: error: no config key 'pretrian'")
    bad = gptflow("config", "--set", "model.n_embd=30")
    assert bad.returncode == 2 and "'model.n_embd' (30) must be divisible" in bad.stderr


def test_config_command_imports_neither_torch_nor_tiktoken():
    code = (
        "import sys, io, contextlib\n"
        "from flows.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['config']) == 0\n"
        "print(sorted(m for m in ('torch', 'tiktoken', 'lightning', 'mlflow', 'prefect') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
