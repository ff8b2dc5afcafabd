"""The pipeline as an ordered list of stages with content keys, and stage selection (--only/--from/--force)."""

from __future__ import annotations

from pathlib import Path

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.data.corpus import check_corpus_sources, corpus_sources
from gpt.data.sources import SourceError
from tasks.content import DIGESTS_FILE, DigestCache
from tasks.corpus import local_files, pinned_by_name
from tasks.definition import PlanContext
from tasks.lm_eval import check_harness
from tasks.pretrain import check_starting_weights
from tasks.stage import Stage, StageError, why_stale
from tasks.stages import DEFINITIONS, STAGE_KINDS, VERSIONS
from tasks.variants import check_task_inputs

__all__ = ["STAGE_KINDS", "VERSIONS", "build_plan", "check_corpus_fits", "check_inputs", "describe", "select"]


def build_plan(
    cfg: ExperimentConfig, artifacts_root: Path, run_id: str | None = None, digests: DigestCache | None = None
) -> list[Stage]:
    """All stages of one run in execution order, from each stage kind's definition.

    Local input files are hashed here (remembered in the workspace's `digests.json` by path, size,
    mtime and inode); `run_id` is the pipeline run the report describes (None in a dry run).
    """
    if digests is None:
        digests = DigestCache(artifacts_root.parent / DIGESTS_FILE)
    ctx = PlanContext(digests, run_id)
    stages: dict[str, Stage] = {}
    for definition in DEFINITIONS:
        for planned in definition.instances(cfg, ctx):
            upstream = [stages[u] for u in planned.upstream]
            stages[planned.name] = Stage(
                planned.name, definition, planned.section, upstream, artifacts_root, planned.variant
            )
            ctx.planned.append(planned)
    digests.save()
    return list(stages.values())


def check_inputs(cfg: ExperimentConfig) -> None:
    """Everything that can be checked before compute: sources resolvable, tasks known."""
    try:
        check_corpus_sources(cfg.corpus)
    except SourceError as e:
        raise ConfigError(str(e)) from None
    check_task_inputs(cfg)
    check_harness(cfg)
    check_starting_weights(cfg)


# How many tokens local text files can become at most, whatever the tokenizer: a raw byte is at most
# 3 bytes of text (a bad byte becomes U+FFFD; NFC, with corpus.fix_unicode, grows UTF-8 at most 3x), a
# token covers at least one byte, and each document (one per text file; a single one is cut in two for
# train/val) adds one end-of-text token. Compressed files and many-document formats have no such bound.
_TEXT_BYTES_PER_RAW_BYTE = 3
_NO_SIZE_BOUND = (".gz", ".parquet", ".jsonl")


def check_corpus_fits(cfg: ExperimentConfig, selected: list[Stage]) -> None:
    """ConfigError before any compute when pretraining is selected and the corpus is local text files
    too small for one train and one val window of `model.block_size` tokens, however they are tokenized.
    Remote and catalog sources are not known yet; the pretrain stage checks the token counts itself."""
    if not any(s.kind == "pretrain" for s in selected):
        return
    sources = corpus_sources(cfg.corpus)
    files: list[Path] = []
    for _, source, _ in sources:
        if pinned_by_name(source):
            return
        try:
            paths = local_files(source)
        except SourceError:
            return  # check_inputs names it
        if any(p.name.endswith(_NO_SIZE_BOUND) for p in paths):
            return
        files += paths
    raw = sum(p.stat().st_size for p in files)
    text = _TEXT_BYTES_PER_RAW_BYTE * raw
    max_bytes = cfg.corpus.max_bytes
    if max_bytes is not None:
        text = min(text, max_bytes)
    tokens = text + max(len(files), 2)
    block_size = cfg.model.block_size
    need = 2 * (block_size + 1)  # a window and its target in each of train and val (the bound stays loose)
    if tokens < need:
        key = sources[0][0] if len(sources) == 1 else "corpus.sources"
        cap = f" (corpus.max_bytes caps the text at {max_bytes})" if max_bytes is not None and max_bytes < raw else ""
        raise ConfigError(
            f"config key '{key}': the corpus files hold {raw} bytes{cap}, at most {tokens} tokens, but one train "
            f"and one val window of model.block_size {block_size} need {need} (2 x (block_size + 1)); "
            "use a bigger corpus (or a larger corpus.max_bytes) or a smaller model.block_size"
        )


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
    plan: list[Stage],
    only: list[str] | None,
    from_stage: str | None,
    force: list[str] | None,
    rebuild: list[str] | None = None,
) -> tuple[list[Stage], set[str]]:
    """The stages to run and the names to recompute, from --only / --from / --force / --rebuild.

    --force S recomputes S and everything downstream; --from S does the same but requires the
    stages before S to be done already; --rebuild S recomputes just S (a corrupt directory; stages
    after it are reused when it comes out byte-identical); --only runs just the named stages
    (cached if done). Raises ConfigError for unknown stage names, an empty selection (`--only ''`
    would otherwise mean "everything") or missing upstream outputs.
    """
    for flag, value in (("--only", only), ("--from", from_stage), ("--force", force), ("--rebuild", rebuild)):
        if value is not None and not value:
            raise ConfigError(f"{flag} names no stage; give stage names (e.g. {flag} pretrain) or leave the flag out")
    for sel in [*(only or []), *(force or []), *(rebuild or []), *([from_stage] if from_stage else [])]:
        if not any(_matches(s, sel) for s in plan):
            names = ", ".join(s.name for s in plan)
            raise ConfigError(f"unknown stage {sel!r} (stages: {names})")
    forced: set[str] = {s.name for s in plan if any(_matches(s, r) for r in rebuild or [])}
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
            raise StageError(corrupt_message(stage, stage.verify()[0]))


def corrupt_message(stage: Stage, problem: str) -> str:
    """One line naming a corrupt stage directory and the command that rebuilds just that stage."""
    return f"stage '{stage.name}' output {stage.dir} is corrupt: {problem}; rebuild just it with --rebuild {stage.name}"


def describe(plan: list[Stage], selected: list[Stage], forced: set[str], deep: bool = False) -> list[dict[str, str]]:
    """What `gptflow run` would do with each stage, and why: a dry run that reads only the workspace.

    status: done (reused) | to run | stale (done before for other inputs) | partial (a killed
    run's directory) | corrupt (files differ from the manifest) | skipped (not selected) |
    waiting (its key hashes the outputs of an upstream stage that is not done yet).
    """
    chosen = {s.name for s in selected}
    rows = []
    for stage in plan:
        status = stage.status()
        if status == "done" and deep and stage.verify(deep=True):
            status = "corrupt"
        if status == "corrupt":
            why = f"{stage.verify(deep=deep)[0]}; rebuild just it with --rebuild {stage.name}"
        elif stage.name not in chosen:
            status, why = "skipped", "not selected by --only/--from"
        elif stage.name in forced:
            status, why = "to run", "forced by --force/--from"
        elif stage.definition.per_run:
            status, why = "to run", "each run writes its own"
        elif status == "done":
            why = "reused"
        elif status == "waiting":
            pending = [u.name for u in stage.upstream_stages if u.output_digest() is None]
            why = f"runs after {', '.join(pending)} (its key hashes their outputs)"
        elif status == "partial":
            resumable = stage.definition.resumable
            why = "resumes from its checkpoint" if resumable else "a killed run's leftovers; restarts"
        else:
            why = why_stale(stage)
            if stage.last_completed() is not None and why != "its directory was removed":
                status = "stale"
        key = stage.key_or_none()
        where = str(stage.dir) if key else ""
        rows.append({"stage": stage.name, "key": key or "-" * 16, "status": status, "why": why, "dir": where})
    return rows
