"""`gptflow sweep` without training: trial expansion, samplers, the results table, the dry run, bad input."""

from __future__ import annotations

import math

import pytest

from flows.cli import main
from flows.sweep.plan import plan_sweep, with_grid
from flows.sweep.table import TrialResult, best_line, best_result, metric_spread, trial_table
from flows.sweep.trials import Trial, grid
from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.config.sweep import ParamRange


def _cfg(micro_config, *overrides: str):
    return load_config(micro_config, list(overrides))


def test_grid_is_every_combination_last_key_fastest():
    trials = grid({"finetune.lr": [1e-3, 2e-3], "finetune.aux_lm_weight": [0.0, 0.5]})
    assert [t.values for t in trials] == [
        {"finetune.lr": 1e-3, "finetune.aux_lm_weight": 0.0},
        {"finetune.lr": 1e-3, "finetune.aux_lm_weight": 0.5},
        {"finetune.lr": 2e-3, "finetune.aux_lm_weight": 0.0},
        {"finetune.lr": 2e-3, "finetune.aux_lm_weight": 0.5},
    ]
    assert [t.number for t in trials] == [1, 2, 3, 4]


def test_trial_configs_set_the_swept_keys_and_drop_the_sweep(micro_config):
    plan = plan_sweep(with_grid(_cfg(micro_config), ["finetune.lr=0.001,0.002", "model.n_layer=1,2"]))
    source = plan.source()
    trials = source.next_batch(10)
    assert len(trials) == 4 and source.next_batch(10) == []
    cfg = plan.trial_config(trials[3])
    assert cfg.finetune.lr == 0.002 and cfg.model.n_layer == 2 and cfg.sweep.params == {}
    assert plan.metric == "sst2.accuracy" and plan.goal == "maximize"


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_fixed_sampler_seed_picks_the_same_trials_twice(micro_config, method):
    sets = [
        f"sweep.method={method}",
        "sweep.trials=5",
        "sweep.sampler_seed=7",
        "sweep.params={finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, finetune.epochs: [1, 2, 3]}",
    ]

    def picks(seed: int) -> list[dict]:
        plan = plan_sweep(_cfg(micro_config, *sets, f"sweep.sampler_seed={seed}"))
        source = plan.source()
        out = []
        while batch := source.next_batch(2):  # told in batches, as the sweep runs them
            for trial in batch:
                out.append(trial.values)
                source.tell(trial, trial.values["finetune.lr"] * 100)
        return out

    first = picks(7)
    assert len(first) == 5 and first == picks(7) and first != picks(8)
    assert all(1e-4 <= v["finetune.lr"] <= 1e-2 and v["finetune.epochs"] in (1, 2, 3) for v in first)


def test_metric_over_seeds_is_the_mean_and_best_follows_the_goal():
    seeded = {"sst2-seed1.accuracy": 0.6, "sst2-seed2.accuracy": 0.8}
    spread = metric_spread(seeded, "sst2.accuracy")
    assert spread is not None and spread.n == 2 and math.isclose(spread.mean, 0.7)
    results = [
        TrialResult(Trial(1, {"finetune.lr": 1}), "a", {"pretrain": "computed"}, {"sst2.accuracy": 0.5}),
        TrialResult(Trial(2, {"finetune.lr": 2}), "b", {"pretrain": "cached"}, seeded),
        TrialResult(Trial(3, {"finetune.lr": 3}), "c", {"pretrain": "cached"}, {}),
    ]
    assert best_result(results, "sst2.accuracy", "maximize") is results[1]
    assert best_result(results, "sst2.accuracy", "minimize") is results[0]
    table = trial_table(results, ["finetune.lr"], "sst2.accuracy", "maximize")
    assert list(table["best"]) == ["", "*", ""] and list(table["computed"]) == [1, 0, 0]
    assert math.isnan(table["sst2.accuracy"][2])
    assert best_line(results[1], "sst2.accuracy") == (
        "best: trial 2 (finetune.lr=2) sst2.accuracy=0.7000 ± 0.1414 (2 seeds)"
    )


def test_dry_run_counts_what_each_trial_computes_and_shares(micro_config, tmp_path, capsys):
    argv = ["stages", "--sweep", "--config", str(micro_config), "--workspace", str(tmp_path)]
    argv += [
        "--grid",
        "finetune.lr=0.001,0.002",
        "--grid",
        "finetune.aux_lm_weight=0,0.5",
        "--set",
        "finetune.tasks=[sst2]",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "computes  6, shares  0" in lines[0]  # corpus, tokenizer, encode, pretrain, finetune, evaluate
    assert all("computes  2, shares  4" in line for line in lines[1:4])
    assert lines[4].endswith("4 trials compute 12 stages (24 if run with no shared cache)")
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


BAD = [
    (["--grid", "finetune.lrr=1,2"], "'sweep.params.finetune.lrr'"),
    (["--grid", "finetune.lr=a,b"], "config key 'finetune.lr' must be a number, got 'a'"),
    (["--grid", "finetune.lr="], "'sweep.params.finetune.lr' is an empty list"),
    (
        [
            "--set",
            "sweep.method=random",
            "--set",
            "sweep.trials=2",
            "--set",
            "sweep.params={finetune.lr: {low: 2, high: 1}}",
        ],
        "'sweep.params.finetune.lr' has low (2) >= high (1)",
    ),
    (["--grid", "finetune.lr=1,2", "--set", "sweep.metric=sst2.bleu"], "'sweep.metric' ('sst2.bleu'): sst2 logs"),
    (["--grid", "finetune.lr=1,2", "--set", "sweep.metric=cola.mcc"], "no trial fine-tunes 'cola'"),
    (["--grid", "finetune.lr=1,2", "--set", "claims=[{sst2: pretrained > no_pretraining}]"], "'claims[0]'"),
    (["--grid", "finetune.lr=1,2", "--set", "claims=[{cola: pretrained > no_pretraining}]"], "'claims[0]'"),
    ([], "'sweep.params' is empty"),
    (["--grid", "finetune.lr=1,2", "--set", "sweep.params={finetune.epochs: {low: 1, high: 3}}"], "ranges need method"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_sweep_fails_in_one_line_naming_the_key_before_any_trial(micro_config, tmp_path, capsys, extra, message):
    assert main(["sweep", "--config", str(micro_config), "--workspace", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "artifacts").exists()


def test_range_ends_are_checked_against_the_key_type(micro_config):
    cfg = _cfg(
        micro_config, "sweep.method=random", "sweep.trials=2", "sweep.params={finetune.epochs: {low: 0.5, high: 3.0}}"
    )
    with pytest.raises(ConfigError, match="finetune.epochs' must be an integer"):
        plan_sweep(cfg)
    assert ParamRange(1, 3).integer and not ParamRange(1.0, 3).integer
