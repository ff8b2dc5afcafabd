"""The pipeline as an ordered list of stages with content keys, and stage selection (--only/--from/--force)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from gpt.benchmarks import get_task
from gpt.config import ConfigError, ExperimentConfig
from gpt.corpus import check_corpus_sources
from gpt.sources import SourceError
from tasks.stage import Stage

# Bump a stage's version when its code changes what it writes; its key and all downstream keys change.
VERSIONS = {
    "corpus": "2",
    "tokenizer": "2",
    "encode": "2",
    "pretrain": "1",
    "finetune": "1",
    "evaluate": "1",
    "report": "1",
}
STAGE_KINDS = tuple(VERSIONS)


def build_plan(cfg: ExperimentConfig, artifacts_root: Path) -> list[Stage]:
    """All stages of one run in execution order, each keyed by its config section and upstream keys."""
    stages: dict[str, Stage] = {}

    def add(name: str, kind: str, section: dict, upstream: list[str], task: str | None = None) -> None:
        keys = [stages[u].key for u in upstream]
        stages[name] = Stage(name, kind, section, upstream, keys, VERSIONS[kind], artifacts_root, task)

    add("corpus", "corpus", asdict(cfg.corpus), [])
    tok_upstream = [] if cfg.tokenizer.kind == "gpt2" else ["corpus"]
    tok_section = {"kind": "gpt2"} if cfg.tokenizer.kind == "gpt2" else asdict(cfg.tokenizer)
    add("tokenizer", "tokenizer", tok_section, tok_upstream)
    add("encode", "encode", {**asdict(cfg.encode), "seed": cfg.seed}, ["corpus", "tokenizer"])
    add(
        "pretrain",
        "pretrain",
        {"model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain), "seed": cfg.seed},
        ["encode", "tokenizer"],
    )
    ft = {k: v for k, v in asdict(cfg.finetune).items() if k != "tasks"}
    for task in cfg.finetune.tasks:
        add(f"finetune[{task}]", "finetune", {**ft, "task": task, "seed": cfg.seed}, ["pretrain", "tokenizer"], task)
        add(
            f"evaluate[{task}]",
            "evaluate",
            {"task": task, "max_examples": cfg.finetune.max_examples, "max_len": cfg.finetune.max_len},
            [f"finetune[{task}]", "tokenizer"],
            task,
        )
    add("report", "report", {}, list(stages))
    return list(stages.values())


def check_inputs(cfg: ExperimentConfig) -> None:
    """Everything that can be checked before compute: sources resolvable, tasks known."""
    try:
        check_corpus_sources(cfg.corpus)
    except SourceError as e:
        raise ConfigError(str(e)) from None
    for i, name in enumerate(cfg.finetune.tasks):
        try:
            get_task(name)
        except KeyError as e:
            raise ConfigError(f"config key 'finetune.tasks[{i}]': {e.args[0]}") from None


def _matches(stage: Stage, selector: str) -> bool:
    return selector in (stage.name, stage.kind)


def descendants(plan: list[Stage], roots: set[str]) -> set[str]:
    """Names of `roots` and every stage that (transitively) reads one of them."""
    out = set(roots)
    for stage in plan:  # plan order is topological
        if any(u in out for u in stage.upstream):
            out.add(stage.name)
    return out


def select(
    plan: list[Stage], only: list[str] | None, from_stage: str | None, force: list[str] | None
) -> tuple[list[Stage], set[str]]:
    """The stages to run and the names to recompute, from --only / --from / --force.

    --force S recomputes S and everything downstream; --from S does the same but requires the
    stages before S to be done already; --only runs just the named stages (cached if done).
    Raises ConfigError for unknown stage names or missing upstream outputs.
    """
    for sel in [*(only or []), *(force or []), *([from_stage] if from_stage else [])]:
        if not any(_matches(s, sel) for s in plan):
            names = ", ".join(s.name for s in plan)
            raise ConfigError(f"unknown stage {sel!r} (stages: {names})")
    forced: set[str] = set()
    if force:
        forced |= descendants(plan, {s.name for s in plan if any(_matches(s, f) for f in force)})
    selected = plan
    if from_stage:
        start = {s.name for s in plan if _matches(s, from_stage)}
        run = descendants(plan, start)
        forced |= run
        selected = [s for s in plan if s.name in run]
    if only:
        selected = [s for s in selected if any(_matches(s, o) for o in only)]
    chosen = {s.name for s in selected}
    by_name = {s.name: s for s in plan}
    for stage in selected:
        for up in stage.upstream:
            if up not in chosen and not by_name[up].is_done():
                raise ConfigError(
                    f"stage '{stage.name}' needs '{up}', which is not done and not selected; "
                    f"run it too (e.g. drop --only/--from)"
                )
    return selected, forced
