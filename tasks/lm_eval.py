"""`lm_eval` stage: lm-evaluation-harness's `simple_evaluate` on the pretrained model (`harness:` in the config).

The model is evaluated through `gpt.downstream.harness.HarnessLM`, lm-eval's `LM` interface over gptflow's GPT
and tiktoken encoding, so any gptflow tokenizer works (see README, "lm-evaluation-harness"). Every metric is
logged as `lm_eval/<task>/<metric>` on the stage run and the parent run; `results.json` holds lm-eval's
results and `samples_<task>.jsonl` each example's scores, for cross-checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import observation
from gpt.downstream.harness_config import HarnessConfig
from tasks.content import DigestCache, check_unchanged
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput, keyed_when_set
from tasks.pretrain_job import MODEL_DIR, kept_model_dir

RESULTS_FILE = "results.json"
METRIC_PREFIX = "lm_eval/"


@dataclass
class LmEvalSection:
    """The harness options, lm-eval's version, and the content of every local file the tasks read."""

    harness: HarnessConfig
    lm_eval_version: str
    files: dict[str, str]  # include_path's files and the local data files its YAMLs name -> sha256
    mirrored: dict[str, str]  # a task whose data gptflow supplies -> that file's sha256
    seed: int
    pretrain_step: int | None = keyed_when_set()  # a kept checkpoint (models/step-N); None: the final weights
    at_step: int = observation(0, "the pretraining step of the weights evaluated: the parent run's metric step")


def plan_lm_eval(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """When `harness.tasks` names any task: one `lm_eval` stage on the final weights, and one `lm_eval[stepN]` on
    each kept checkpoint that `finetune.from_checkpoints` fine-tunes from."""
    from gpt.downstream.harness_tasks import MIRRORED

    h = cfg.harness
    if not h.tasks:
        return []
    mirrored = {n: MIRRORED[n].remote.sha256 for n in h.tasks if n in MIRRORED}
    files = include_files(h.include_path, ctx.digests)
    out, lm_eval_version = [], version("lm_eval")
    # the kept checkpoints fine-tuned from (finetune.from_checkpoints), then the final weights
    for step in sorted(s for s in cfg.finetune.checkpoint_steps() if s is not None) + [None]:
        section = LmEvalSection(h, lm_eval_version, files, mirrored, cfg.seed, step, step or cfg.pretrain.max_steps)
        out.append(Planned("lm_eval" if step is None else f"lm_eval[step{step}]", section, ["pretrain"]))
    return out


def check_harness(cfg: ExperimentConfig) -> None:
    """Before compute: `harness.include_path` is a folder, each task is known to lm-eval and its data is
    local, cached or reachable. Raises ConfigError naming the key."""
    from gpt.config.fields import ConfigError
    from gpt.downstream.harness_tasks import HarnessTaskError, check_harness_data, check_harness_task

    h = cfg.harness
    if not h.tasks:
        return
    if h.include_path is not None and not Path(h.include_path).expanduser().is_dir():
        raise ConfigError(f"config key 'harness.include_path': {h.include_path} is not a folder")
    for i, name in enumerate(h.tasks):
        try:
            check_harness_task(name, h.include_path)
            check_harness_data(name, h.include_path)
        except HarnessTaskError as e:
            raise ConfigError(f"config key 'harness.tasks[{i}]': {e}") from None


def include_files(include_path: str | None, digests: DigestCache) -> dict[str, str]:
    """sha256 of each file under `include_path` and of each local data file its YAML tasks name."""
    from gpt.downstream.harness_tasks import local_data_files

    if include_path is None:
        return {}
    root = Path(include_path).expanduser().resolve()
    paths = sorted({*(p.resolve() for p in root.rglob("*") if p.is_file()), *local_data_files(root)})
    # by path inside the folder: a copy elsewhere has the same key (a data file outside it is named in a YAML)
    return {
        str(p.relative_to(root) if p.is_relative_to(root) else p): d
        for p, d in zip(paths, digests.files(paths, f"harness.include_path {root}").values(), strict=True)
    }


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's per-task results as `lm_eval/<task>/<metric>` (a filter other than `none` kept as `_<filter>`)."""
    out = {}
    for task, scores in results.items():
        for key, value in scores.items():
            metric, _, filt = key.partition(",")
            if not filt or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            out[f"{METRIC_PREFIX}{task}/{name}"] = float(value)
    return out


def compute(section: LmEvalSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Run the tasks with lm-eval on the model; write its results and per-example scores."""
    import lm_eval

    from gpt.data.tokenizer import load_tokenizer
    from gpt.downstream.harness import HarnessLM
    from gpt.downstream.harness_tasks import harness_task_specs
    from gpt.model.transformer import load_model

    h = section.harness
    check_unchanged(section.files, include_files(h.include_path, env.digest_cache()), env.name)
    model_dir = inputs["pretrain"] / (
        MODEL_DIR if section.pretrain_step is None else kept_model_dir(section.pretrain_step)
    )
    model = HarnessLM(load_model(model_dir), load_tokenizer(model_dir), h.batch_size)
    specs, manager = harness_task_specs(h.tasks, env.cache_dir, h.include_path)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=specs,
        task_manager=manager,
        num_fewshot=h.num_fewshot,
        limit=h.limit,
        bootstrap_iters=1000,
        log_samples=True,
        random_seed=section.seed,
        numpy_random_seed=section.seed,
        torch_random_seed=section.seed,
        fewshot_random_seed=section.seed,
    )
    assert results is not None  # None only on non-zero ranks
    (out / RESULTS_FILE).write_text(
        json.dumps({k: results[k] for k in ("results", "n-samples", "versions") if k in results}, indent=2, default=str)
    )
    artifacts = [RESULTS_FILE]
    for task, samples in results.get("samples", {}).items():
        name = f"samples_{task}.jsonl"
        with open(out / name, "w", encoding="utf-8") as f:
            for s in samples:
                row = {"doc_id": s["doc_id"], "target": s["target"], "scores": s["filtered_resps"]}
                f.write(json.dumps(row, default=str) + "\n")
        artifacts.append(name)
    return StageOutput(summary=metrics_of(results["results"]), artifacts=artifacts)


DEFINITION = StageDef(
    kind="lm_eval",
    version="1",
    doc="lm-evaluation-harness tasks (harness:) on the pretrained model, lm_eval/<task>/<metric>",
    instances=plan_lm_eval,
    compute=compute,
)
