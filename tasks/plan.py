"""The pipeline as an ordered list of stages with content keys, and stage selection (--only/--from/--force)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from gpt.config import ConfigError, ExperimentConfig
from gpt.corpus import check_corpus_sources
from gpt.sources import SourceError
from gpt.tasks_recipe import check_task_inputs, finetune_sections, variants
from tasks.stage import RESUMABLE, Stage, StageError, why_stale

# Bump a stage's version when its code changes what it writes; its key and all downstream keys change.
VERSIONS = {
    "corpus": "2",
    "tokenizer": "2",
    "encode": "2",
    "pretrain": "3",
    "finetune": "4",  # 3: batches a function of (seed, epoch, position); 4: head init from the section seed
    "evaluate": "2",
    "report": "2",
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
        {"model": asdict(cfg.model), "pretrain": cfg.pretrain.cache_section(), "seed": cfg.seed},
        ["encode", "tokenizer"],
    )
    for variant in variants(cfg):  # each task, its ablations (`ablations:`) and seeds (`finetune.seeds`)
        ft, ev = finetune_sections(cfg, variant)
        ft_upstream = ["pretrain", "tokenizer"] if ft["recipe"]["init"] == "pretrained" else ["tokenizer"]
        add(f"finetune[{variant.name}]", "finetune", ft, ft_upstream, variant.name)
        add(f"evaluate[{variant.name}]", "evaluate", ev, [f"finetune[{variant.name}]", "tokenizer"], variant.name)
    add("report", "report", {}, list(stages))
    return list(stages.values())


def check_inputs(cfg: ExperimentConfig) -> None:
    """Everything that can be checked before compute: sources resolvable, tasks known."""
    try:
        check_corpus_sources(cfg.corpus)
    except SourceError as e:
        raise ConfigError(str(e)) from None
    check_task_inputs(cfg)


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
                    f"stage '{stage.name}' needs '{up}', which is not done ({by_name[up].status()}) and not selected; "
                    f"run it too (e.g. drop --only/--from)"
                )
    return selected, forced


def check_stages(plan: list[Stage], selected: list[Stage], forced: set[str]) -> None:
    """Refuse to run on top of a corrupt stage directory (files missing or resized since its manifest).

    Nothing is deleted: the message names the directory and the `--force` that rebuilds it.
    """
    for stage in selected:
        if stage.name not in forced and stage.status() == "corrupt":
            raise StageError(
                f"stage '{stage.name}' output {stage.dir} is corrupt: {stage.verify()[0]}; "
                f"rebuild it with --force {stage.name}"
            )


def describe(plan: list[Stage], selected: list[Stage], forced: set[str], deep: bool = False) -> list[dict[str, str]]:
    """What `gptflow run` would do with each stage, and why: a dry run that reads only the workspace.

    status: done (reused) | to run | stale (done before for other inputs) | partial (a killed
    run's directory) | corrupt (files differ from the manifest) | skipped (not selected).
    """
    chosen = {s.name for s in selected}
    rows = []
    for stage in plan:
        status = stage.status()
        if status == "done" and deep and stage.verify(deep=True):
            status = "corrupt"
        if status == "corrupt":
            why = f"{stage.verify(deep=deep)[0]}; rebuild with --force {stage.name}"
        elif stage.name not in chosen:
            status, why = "skipped", "not selected by --only/--from"
        elif stage.name in forced:
            status, why = "to run", "forced by --force/--from"
        elif status == "done":
            why = "reused"
        elif status == "partial":
            why = "resumes from its checkpoint" if stage.kind in RESUMABLE else "a killed run's leftovers; restarts"
        else:
            why = why_stale(stage)
            if stage.last_completed() is not None and why != "its directory was removed":
                status = "stale"
        rows.append({"stage": stage.name, "key": stage.key, "status": status, "why": why, "dir": str(stage.dir)})
    return rows
