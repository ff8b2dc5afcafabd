"""`gptflow run --until-decided [--max-seeds N]`: add fine-tuning seeds until every claim is decided.

One seed per arm cannot tell an ablation's effect from seed noise; GPT-1's own code reports a median
over 10 runs for that reason. Here a run states its claims (`claims:`), and rounds of ordinary
pipeline runs add seeds to `finetune.seeds` (the next one is the largest + 1) until every claim is
supported or refuted (reports/claims.py: Welch's t 95% interval over the seeds) or N seeds are
reached (default 10, GPT-1's count). Every round is a full `gptflow run`, so the stages earlier
rounds finished (corpus, tokenizer, pretraining, the seeds already fine-tuned) are reused from the
cache and only the new seed's fine-tune/evaluate stages compute. The verdicts are read back from
MLflow after each round, exactly as the report card and `gptflow compare` read them.

The first round honours `--from`, `--force` and `--rebuild`; later rounds leave them out, so what
the first round recomputed is reused rather than recomputed again. `--only` applies to every round.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any, NamedTuple

from mlflow.tracking import MlflowClient

from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.config.loader import from_dict
from reports.claims import UNDECIDED, decided, run_verdicts, verdict_line

DEFAULT_MAX_SEEDS = 10  # GPT-1's code reports the median over 10 fine-tuning runs
FIRST_SEEDS = [1, 2]  # without `finetune.seeds` / --seeds: the fewest that give an interval


class Round(NamedTuple):
    """What one round is: `gptflow run`'s own steps (flows/cli.py), passed in rather than imported (no cycle)."""

    check: Callable[[ExperimentConfig, argparse.Namespace, Workspace], None]  # everything cheap, before compute
    run: Callable[[ExperimentConfig, argparse.Namespace, Workspace], dict[str, Any]]  # the flow; its result
    end: Callable[[ExperimentConfig, Workspace, dict[str, Any]], None]  # the lines a run ends with


def with_seeds(cfg: ExperimentConfig, seeds: list[int]) -> ExperimentConfig:
    """`cfg` with `finetune.seeds` set to `seeds` (checked like any config)."""
    data = cfg.to_dict()
    data["finetune"]["seeds"] = list(seeds)
    return from_dict(ExperimentConfig, data)


def check_options(cfg: ExperimentConfig, args: argparse.Namespace) -> tuple[list[int], int]:
    """Before any compute: (the first round's seeds, the most seeds); ConfigError naming what is wrong."""
    if not args.until_decided:
        raise ConfigError("--max-seeds needs --until-decided")
    if not cfg.claims:
        raise ConfigError("--until-decided needs `claims:` in the config (e.g. '- sst2: pretrained > no_pretraining')")
    seeds = list(cfg.finetune.seeds or FIRST_SEEDS)
    most = DEFAULT_MAX_SEEDS if args.max_seeds is None else args.max_seeds
    need = max(2, len(seeds))
    if most < need:
        raise ConfigError(
            f"--max-seeds {most} is below {need}: the first round runs seeds {seeds}, "
            "and a confidence interval needs 2 seeds per arm"
        )
    return seeds, most


def until_decided(cfg: ExperimentConfig, args: argparse.Namespace, ws: Workspace, steps: Round) -> int:
    """Run rounds of the pipeline, one more fine-tuning seed each, until every claim is decided or the
    seeds reach --max-seeds; print each round's verdicts, then the last round's usual ending."""
    from flows.api_server import prefect_api

    seeds, most = check_options(cfg, args)
    current = with_seeds(cfg, seeds)
    steps.check(current, args, ws)  # a bad input fails here, before the Prefect API or any stage starts
    later = copy.copy(args)  # rounds after the first reuse what the first recomputed
    later.from_stage = later.force = later.rebuild = None
    round_args, number = args, 1
    with prefect_api():  # one API for every round (a round's own prefect_api() finds it up and reuses it)
        while True:
            result = steps.run(current, round_args, ws)
            verdicts = run_verdicts(MlflowClient(ws.tracking_uri).get_run(result["run_id"]))
            undecided = sum(v.verdict == UNDECIDED for v in verdicts)
            print(
                f"\nuntil-decided round {number}: seeds {', '.join(map(str, seeds))}: "
                f"{len(verdicts) - undecided} of {len(verdicts)} claims decided"
            )
            for v in verdicts:
                print(f"  claim {verdict_line(v)}")
            if decided(verdicts) or len(seeds) >= most:
                break
            seeds = [*seeds, max(seeds) + 1]
            current, round_args, number = with_seeds(cfg, seeds), later, number + 1
            steps.check(current, round_args, ws)
    if undecided:
        print(f"until-decided: stopped at --max-seeds {most} with {undecided} of {len(verdicts)} claims undecided")
    else:
        print(f"until-decided: every claim decided with {len(seeds)} seeds")
    steps.end(current, ws, result)
    return 0
