"""Claims: verdicts on synthetic metrics match a hand computation (Welch's t), each verdict branch, the report
card, `compare` and the run's last lines show them, bad input is one line, and `--until-decided` stops when
every claim is decided (a fast test with the pipeline replaced; a slow one on the micro pipeline)."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from cli_helpers import gptflow
from mlflow.tracking import MlflowClient
from report_fixtures import MICRO, record_in_new_workspace, record_run
from scipy import stats

from gpt.config.loader import load_config
from reports.claims import (
    CLAIMS_TAG,
    REFUTED,
    SUPPORTED,
    UNDECIDED,
    ClaimRecord,
    Verdict,
    claims_json,
    decide,
    decided,
    read_claims,
    verdict_cell,
    verdict_line,
    verdict_of,
)

CLAIM = ["ablations=[no_pretraining]", "claims=[{sst2: pretrained > no_pretraining}]"]


def claim(op: str, left: str | None = None, right: str | None = "no_pretraining") -> ClaimRecord:
    names = [a or "pretrained" for a in (left, right)]
    text = f"sst2: {names[0]} {op} {names[1]}"
    return {"text": text, "task": "sst2", "left": left, "op": op, "right": right, "metric": "accuracy"}


def seeded(recipe: list[float], ablation: list[float]) -> dict[str, float]:
    """Parent-run metrics of sst2 fine-tuned with seeds 1..n, the recipe and the no_pretraining arm."""
    metrics = {f"sst2-seed{i}.accuracy": v for i, v in enumerate(recipe, 1)}
    metrics |= {f"sst2-no_pretraining-seed{i}.accuracy": v for i, v in enumerate(ablation, 1)}
    return metrics | {"sst2-seed1.majority_rate": 0.5, "pretrain.final_val_loss": 5.0}


def test_welch_interval_matches_a_hand_computation():
    left, right = [0.80, 0.82, 0.84], [0.70, 0.71, 0.72]
    # by hand: means 0.82 and 0.71; sample variances 0.0004 and 0.0001; n = 3 each
    a, b = statistics.variance(left) / 3, statistics.variance(right) / 3
    assert a == pytest.approx(0.0004 / 3) and b == pytest.approx(0.0001 / 3)
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 2)  # Welch–Satterthwaite: 0.25 / 0.085 = 2.94
    assert df == pytest.approx(0.25 / 0.085)
    half = stats.t.ppf(0.975, df) * se
    v = decide(claim(">"), seeded(left, right))
    assert v.diff == pytest.approx(0.11)
    assert (v.low, v.high) == (pytest.approx(0.11 - half), pytest.approx(0.11 + half))
    assert 0.068 < v.low < 0.069 and 0.151 < v.high < 0.152  # t(0.975, 2.94) ≈ 3.22, se ≈ 0.0129: ± 0.0416
    assert (v.n_left, v.n_right, v.verdict) == (3, 3, SUPPORTED)
    # the same interval from scipy's own Welch test (t statistic and df agree)
    welch = stats.ttest_ind(left, right, equal_var=False)
    assert welch.statistic == pytest.approx(0.11 / se) and welch.df == pytest.approx(df)


@pytest.mark.parametrize(
    ("op", "low", "high", "expected"),
    [
        (">", 0.01, 0.1, SUPPORTED),
        (">", 0.0, 0.1, UNDECIDED),
        (">", -0.1, 0.1, UNDECIDED),
        (">", -0.1, 0.0, REFUTED),
        (">", -0.1, -0.01, REFUTED),
        (">=", 0.0, 0.1, SUPPORTED),
        (">=", 0.01, 0.1, SUPPORTED),
        (">=", -0.1, 0.0, UNDECIDED),
        (">=", -0.1, -0.01, REFUTED),
        ("<", -0.1, -0.01, SUPPORTED),
        ("<", -0.1, 0.0, UNDECIDED),
        ("<", -0.1, 0.1, UNDECIDED),
        ("<", 0.0, 0.1, REFUTED),
        ("<=", -0.1, 0.0, SUPPORTED),
        ("<=", 0.0, 0.1, UNDECIDED),
        ("<=", 0.01, 0.1, REFUTED),
        (">", math.nan, math.nan, UNDECIDED),
    ],
)
def test_verdict_rule(op, low, high, expected):
    assert verdict_of(op, low, high) == expected


@pytest.mark.parametrize(
    ("op", "recipe", "ablation", "expected"),
    [
        (">", [0.80, 0.82, 0.84], [0.70, 0.71, 0.72], SUPPORTED),
        (">", [0.70, 0.71, 0.72], [0.80, 0.82, 0.84], REFUTED),
        (">", [0.70, 0.80, 0.75], [0.72, 0.78, 0.74], UNDECIDED),
        (">=", [0.80, 0.82, 0.84], [0.70, 0.71, 0.72], SUPPORTED),
        (">=", [0.70, 0.71, 0.72], [0.80, 0.82, 0.84], REFUTED),
        (">=", [0.70, 0.80, 0.75], [0.72, 0.78, 0.74], UNDECIDED),
        ("<", [0.70, 0.71, 0.72], [0.80, 0.82, 0.84], SUPPORTED),
        ("<", [0.80, 0.82, 0.84], [0.70, 0.71, 0.72], REFUTED),
        ("<", [0.70, 0.80, 0.75], [0.72, 0.78, 0.74], UNDECIDED),
    ],
)
def test_each_verdict_on_synthetic_seeds(op, recipe, ablation, expected):
    v = decide(claim(op), seeded(recipe, ablation))
    assert v.verdict == expected
    assert v.diff == pytest.approx(statistics.fmean(recipe) - statistics.fmean(ablation))


def test_arms_in_either_order_and_the_mirror_claims_agree():
    metrics = seeded([0.80, 0.82, 0.84], [0.70, 0.71, 0.72])
    flipped = decide(claim("<", "no_pretraining", None), metrics)
    assert flipped.verdict == SUPPORTED and flipped.diff == pytest.approx(-0.11)
    assert decide(claim(">=", "no_pretraining", None), metrics).verdict == REFUTED


def test_one_seed_is_undecided():
    v = decide(claim(">"), {"sst2.accuracy": 0.9, "sst2-no_pretraining.accuracy": 0.5})
    assert v.verdict == UNDECIDED and v.diff == pytest.approx(0.4) and math.isnan(v.low) and math.isnan(v.high)
    assert (v.n_left, v.n_right) == (1, 1)
    assert (
        verdict_line(v)
        == "sst2: pretrained > no_pretraining  undecided  accuracy +0.400 (no CI: needs 2 seeds per arm), 1 vs 1 seeds"
    )
    two_vs_one = seeded([0.8, 0.9], [0.5])
    assert decide(claim(">"), two_vs_one).verdict == UNDECIDED


def test_equal_constant_arms_refute_greater_and_support_at_least():
    metrics = seeded([0.7, 0.7, 0.7], [0.7, 0.7, 0.7])
    strict, weak = decide(claim(">"), metrics), decide(claim(">="), metrics)
    assert (strict.low, strict.high) == (0.0, 0.0) and strict.verdict == REFUTED
    assert weak.verdict == SUPPORTED
    assert decide(claim("<="), metrics).verdict == SUPPORTED and decide(claim("<"), metrics).verdict == REFUTED


def test_an_arm_without_values_is_undecided():
    v = decide(claim(">", None, "no_aux_lm"), seeded([0.8, 0.9], [0.5, 0.6]))
    assert v.verdict == UNDECIDED and math.isnan(v.diff) and (v.n_left, v.n_right) == (2, 0)
    assert "no values for an arm" in verdict_line(v)


def test_verdict_line_and_cell():
    v = Verdict("sst2: pretrained > no_pretraining", "accuracy", 0.052, 0.011, 0.093, 3, 3, SUPPORTED)
    assert verdict_line(v) == (
        "sst2: pretrained > no_pretraining  supported  accuracy +0.052 [95% CI +0.011, +0.093], Welch t, 3 vs 3 seeds"
    )
    assert verdict_cell(v) == "supported +0.052 [+0.011, +0.093] n=3/3"
    assert decided([v]) and not decided([v, Verdict("x", "accuracy", 0.0, -1.0, 1.0, 2, 2, UNDECIDED)])


def test_claims_tag_round_trip_with_the_headline_metric():
    cfg = load_config(
        MICRO,
        [
            "ablations=[no_pretraining]",
            "claims=[{sst2: pretrained > no_pretraining}, {cola: recipe >= no_pretraining}]",
            "finetune.tasks=[sst2, cola]",
        ],
    )
    records = read_claims(claims_json(cfg))
    assert [r["metric"] for r in records] == ["accuracy", "matthews"]  # cola's headline metric
    assert records[0] == claim(">")
    assert records[1]["text"] == "cola: recipe >= no_pretraining" and records[1]["left"] is None
    assert read_claims(None) == [] and read_claims("not json") == [] and read_claims('{"a": 1}') == []


def test_claims_change_no_stage_key(tmp_path):
    """An observation: stating (or changing) a claim reuses every stage."""
    from tasks.plan import build_plan

    def digests(*extra: str) -> dict[str, str]:
        cfg = load_config(MICRO, ["ablations=[no_pretraining]", *extra])
        return {s.name: s.section_digest() for s in build_plan(cfg, tmp_path / "artifacts")}

    assert digests() == digests(CLAIM[1]) == digests("claims=[{sst2: no_pretraining >= recipe}]")


# --- the report card, `compare` and the run's last lines --------------------------------------------------------

RECIPE = {"sst2-seed1": 0.70, "sst2-seed2": 0.80, "sst2-seed3": 0.75}
ABLATION = {"sst2-no_pretraining-seed1": 0.50, "sst2-no_pretraining-seed2": 0.52, "sst2-no_pretraining-seed3": 0.60}


@pytest.fixture(scope="module")
def claimed(tmp_path_factory) -> tuple[Path, MlflowClient, str, str]:
    """A recorded seeded run with a claim (tag as `gptflow run` sets it), and one without claims: (ws, client, ids)."""
    overrides = ["finetune.seeds=[1,2,3]", *CLAIM]
    ws, client, run_id = record_in_new_workspace(
        tmp_path_factory, "claims", overrides, tasks=RECIPE, ablations=ABLATION
    )
    client.set_tag(run_id, CLAIMS_TAG, claims_json(load_config(MICRO, overrides)))
    other = record_run(client, "claims", tmp_path_factory.mktemp("assets"), ["pretrain.lr=0.01"])
    return ws, client, run_id, other


def expected_verdict() -> Verdict:
    return decide(claim(">"), {f"{k}.accuracy": v for k, v in {**RECIPE, **ABLATION}.items()})


def test_report_card_has_a_claims_table(claimed, tmp_path):
    from reports.run_report import build_report

    _, client, run_id, _ = claimed
    v = expected_verdict()
    assert v.verdict == SUPPORTED and v.diff == pytest.approx(0.21)
    files = build_report(client, run_id, tmp_path)
    md = files.markdown.read_text()
    section = md.split("## Claims")[1]
    assert "| claim | metric | difference | 95% CI | seeds | verdict |" in section
    ci = f"[{v.low:+.3f}, {v.high:+.3f}]"
    row = f"| sst2: pretrained > no_pretraining | accuracy | +0.210 | {ci} | 3 vs 3 | supported |"
    assert row in section
    assert "Welch t" in section
    assert "<h2>Claims</h2>" in files.html.read_text()


def test_compare_has_a_column_per_claim(claimed, tmp_path):
    from reports.compare import comparison_table, comparison_text, pipeline_runs, write_comparison

    ws, client, run_id, other = claimed
    table = comparison_table(pipeline_runs(client.tracking_uri, "claims"))
    column = "claim: sst2: pretrained > no_pretraining"
    v = expected_verdict()
    cell = f"supported +0.210 [{v.low:+.3f}, {v.high:+.3f}] n=3/3"
    assert dict(zip(table["run_id"], table[column], strict=True)) == {run_id: cell, other: ""}
    assert column not in table.attrs["metrics"]
    csv = comparison_text(table, "csv")
    assert cell in csv and column in csv
    md = comparison_text(table, "md")
    assert f"| {cell} |" in md and f"`{column}`" not in md  # a verdict column, not a differing config key
    html = write_comparison(table, client, tmp_path / "c.html", "html").read_text()
    assert "claim: sst2: pretrained &gt; no_pretraining" in html and cell in html
    df = pd.read_csv(write_comparison(table, client, tmp_path / "c.csv", "csv"))
    assert df[column].fillna("").tolist() == [cell, ""] or df[column].fillna("").tolist() == ["", cell]


def test_headline_ends_with_the_claim_verdicts(claimed, tmp_path):
    from reports.headline import headline

    ws, client, run_id, other = claimed
    lines = headline(client.tracking_uri, run_id, tmp_path)
    assert f"claim {verdict_line(expected_verdict())}" in lines
    assert not any(line.startswith("claim ") for line in headline(client.tracking_uri, other, tmp_path))


# --- bad input: one line, exit 2, before anything starts -------------------------------------------------------


def bad_run(tmp_path: Path, yaml_text: str, *extra: str) -> str:
    cfg = tmp_path / "claims.yaml"
    cfg.write_text(yaml_text)
    proc = gptflow("run", "--config", str(cfg), "--workspace", str(tmp_path / "ws"), *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptflow: error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "ws" / "artifacts").exists() and not (tmp_path / "ws" / "mlflow.db").exists()
    return lines[0]


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("ablations: [no_pretraining]\nclaims:\n  - sst2: pretrained > no_aux_lm\n", "names arm 'no_aux_lm'"),
        ("ablations: [no_pretraining]\nclaims:\n  - rte: pretrained > no_pretraining\n", "names task 'rte'"),
    ],
)
def test_claim_naming_an_arm_or_task_not_in_the_run(tmp_path, yaml_text, needle):
    line = bad_run(tmp_path, yaml_text, "--until-decided")
    assert "claims[0]" in line and needle in line


def test_until_decided_needs_claims(tmp_path):
    assert "--until-decided needs `claims:` in the config" in bad_run(tmp_path, "seed: 1\n", "--until-decided")


def test_max_seeds_below_the_first_round_or_without_until_decided(tmp_path):
    claims = "ablations: [no_pretraining]\nclaims:\n  - sst2: pretrained > no_pretraining\n"
    line = bad_run(tmp_path, claims, "--until-decided", "--max-seeds", "2", "--seeds", "1,2,3")
    assert line.startswith("gptflow: error: --max-seeds 2 is below 3")
    assert "--max-seeds needs --until-decided" in bad_run(tmp_path, claims, "--max-seeds", "4")


# --- --until-decided: the loop, with the pipeline replaced ------------------------------------------------------

LEFT = [0.80, 0.70, 0.84, 0.82, 0.83]  # by seed; with the ablation below, decided (supported) at 5 seeds
RIGHT = [0.70, 0.78, 0.71, 0.72, 0.70]


@pytest.fixture
def fake_pipeline(monkeypatch):
    """Rounds whose run records its seeds and returns a run with the LEFT/RIGHT metrics up to them."""
    import flows.api_server
    import flows.until_decided

    rounds: list[list[int]] = []
    froms: list[str | None] = []
    tags = {CLAIMS_TAG: claims_json(load_config(MICRO, CLAIM))}

    def run_once(cfg, args, ws):
        rounds.append(list(cfg.finetune.seeds))
        froms.append(args.from_stage)
        return {"run_id": str(len(rounds)), "stages": {}, "artifacts": "."}

    def get_run(run_id):
        seeds = rounds[int(run_id) - 1]
        n = len(seeds)
        return SimpleNamespace(data=SimpleNamespace(metrics=seeded(LEFT[:n], RIGHT[:n]), tags=tags))

    monkeypatch.setattr(flows.api_server, "prefect_api", contextlib.nullcontext)
    monkeypatch.setattr(flows.until_decided, "MlflowClient", lambda uri: SimpleNamespace(get_run=get_run))
    steps = flows.until_decided.Round(
        check=lambda cfg, args, ws: None, run=run_once, end=lambda cfg, ws, result: print("results:")
    )
    return rounds, steps, froms


def until(fake, max_seeds: int | None, seeds: list[int] | None = None) -> int:
    from flows.until_decided import until_decided

    cfg = load_config(MICRO, [*CLAIM, *([f"finetune.seeds={seeds}"] if seeds else [])])
    args = argparse.Namespace(
        until_decided=True, max_seeds=max_seeds, only=None, from_stage="pretrain", force=None, rebuild=None
    )
    return until_decided(cfg, args, SimpleNamespace(tracking_uri="unused"), fake[1])


def test_until_decided_stops_when_every_claim_is_decided(fake_pipeline, capsys):
    assert until(fake_pipeline, None) == 0
    assert fake_pipeline[0] == [[1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5]]
    assert fake_pipeline[2] == ["pretrain", None, None, None]  # --from: the first round only
    out = capsys.readouterr().out
    assert re.findall(r"until-decided round (\d+): seeds ([\d, ]+): (\d) of 1 claims decided", out) == [
        ("1", "1, 2", "0"),
        ("2", "1, 2, 3", "0"),
        ("3", "1, 2, 3, 4", "0"),
        ("4", "1, 2, 3, 4, 5", "1"),
    ]
    assert "claim sst2: pretrained > no_pretraining  supported" in out
    assert "every claim decided with 5 seeds" in out and out.rstrip().endswith("results:")


def test_until_decided_stops_at_max_seeds(fake_pipeline, capsys):
    assert until(fake_pipeline, 4) == 0
    assert fake_pipeline[0] == [[1, 2], [1, 2, 3], [1, 2, 3, 4]]
    out = capsys.readouterr().out
    assert "stopped at --max-seeds 4 with 1 of 1 claims undecided" in out
    assert out.count("claim sst2: pretrained > no_pretraining  undecided") == 3


def test_until_decided_starts_from_the_configured_seeds(fake_pipeline):
    until(fake_pipeline, 5, [1, 2, 3, 4])
    assert fake_pipeline[0] == [[1, 2, 3, 4], [1, 2, 3, 4, 5]]


# --- --until-decided on the real micro pipeline (slow) ----------------------------------------------------------


@pytest.mark.slow
def test_until_decided_on_the_micro_pipeline(prefect_api, tmp_path, capsys):
    """Real rounds from one seed (no interval: undecided) adding seeds until the claim is decided or 3 are reached;
    each later round reuses every stage of the one before and computes only the new seed's fine-tune/evaluate."""
    import mlflow
    from conftest import TRACKING_URI_AT_START

    from flows.cli import main

    mlflow.set_tracking_uri(TRACKING_URI_AT_START)
    sets = [
        "finetune.tasks=[sst2]",
        "ablations=[no_pretraining]",
        "claims=[{sst2: pretrained >= no_pretraining}]",
        "finetune.max_examples=32",
    ]
    argv = ["run", "--config", str(MICRO), "--workspace", str(tmp_path), *[a for s in sets for a in ("--set", s)]]
    capsys.readouterr()
    assert main([*argv, "--seeds", "1", "--until-decided", "--max-seeds", "3"]) == 0
    out = capsys.readouterr().out
    rounds = re.findall(r"until-decided round (\d+): seeds ([\d, ]+): (\d) of 1 claims decided", out)
    assert [r[:2] for r in rounds] == [
        (str(i), ", ".join(map(str, range(1, i + 1)))) for i in range(1, len(rounds) + 1)
    ]
    assert 2 <= len(rounds) <= 3 and rounds[0][2] == "0"  # one seed per arm: no interval, undecided
    assert all(r[2] == "0" for r in rounds[:-1])  # it stopped at the first decided round ...
    if rounds[-1][2] == "0":  # ... or at --max-seeds
        assert len(rounds) == 3 and "stopped at --max-seeds 3 with 1 of 1 claims undecided" in out
    else:
        assert f"every claim decided with {len(rounds)} seeds" in out
    assert "results:" in out and out.count("  claim sst2: pretrained >= no_pretraining") == len(rounds) + 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gptflow-micro")
    parents = client.search_runs(
        [exp.experiment_id], "tags.`gptflow.kind` = 'pipeline'", order_by=["attributes.start_time ASC"]
    )
    assert len(parents) == len(rounds) and all(CLAIMS_TAG in p.data.tags for p in parents)
    for seed, parent in enumerate(parents[1:], 2):
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        computed = sorted(c.data.tags["stage"] for c in children if c.data.tags["cached"] == "false")
        new = [
            f"{stage}[sst2{arm}-seed{seed}]" for stage in ("finetune", "evaluate") for arm in ("", "-no_pretraining")
        ]
        assert computed == sorted([*new, "report"])
