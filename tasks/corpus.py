"""`corpus` stage: resolve the sources (mirror first), clean and mix them, write documents as JSONL.

Its key hashes local source files by content: the resolved file list of each local file, folder or
glob (`mirror://` included) with each file's sha256, so an edited or added file makes the stage
stale. Catalog sources (and `task:` sources, through their task's catalog files) are keyed by the
sha256 the catalog pins for their files; `https://...#sha256=`
and `hf://...&revision=` sources are pinned by their name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt.config.experiment import ExperimentConfig
from gpt.data.config import CorpusConfig
from gpt.data.sources import CATALOG, MIRROR_SCHEME, TASK_SCHEME, resolve_local, resolve_mirror
from gpt.downstream.builtin import task_catalog_entries
from tasks.content import DigestCache, check_listing_unchanged, check_unchanged
from tasks.definition import PlanContext, Planned, StageDef, StageEnv, StageOutput

CORPUS_FILE = "corpus.jsonl"


@dataclass
class CorpusSection:
    """The `corpus` config and the content of every local source file it reads."""

    corpus: CorpusConfig
    files: dict[str, str] = field(default_factory=dict)  # local source file -> sha256
    catalog: dict[str, list[str]] = field(default_factory=dict)  # catalog source -> its files' pinned sha256


def pinned_by_name(source: str) -> bool:
    """A source whose content its name fixes (catalog, checksummed URL, hub revision): no local file to read."""
    return source in CATALOG or source.startswith(("https://", "http://", "hf://", TASK_SCHEME))


def local_files(source: str) -> list[Path]:
    """The local files a source reads; [] for sources pinned by name."""
    if pinned_by_name(source):
        return []
    return resolve_mirror(source) if source.startswith(MIRROR_SCHEME) else resolve_local(source)


def source_digests(corpus: CorpusConfig, digests: DigestCache) -> dict[str, str]:
    """sha256 of each local file the corpus reads; a folder that changes while it is hashed is an error."""
    from gpt.data.corpus import corpus_sources

    out: dict[str, str] = {}
    for _, source, _ in corpus_sources(corpus):
        before = local_files(source)
        out.update(digests.files(before, source))
        check_listing_unchanged(before, local_files(source), source)
    return out


def plan_corpus(cfg: ExperimentConfig, ctx: PlanContext) -> list[Planned]:
    """One `corpus` stage, keyed by the cleaning options and the local sources' content."""
    from gpt.data.corpus import corpus_sources

    catalog = {}
    for _, source, _ in corpus_sources(cfg.corpus):
        entries = task_catalog_entries(source) if source.startswith(TASK_SCHEME) else (source,)
        if all(e in CATALOG for e in entries):
            catalog[source] = [f.sha256 for e in entries for f in CATALOG[e]]
    return [Planned("corpus", CorpusSection(cfg.corpus, source_digests(cfg.corpus, ctx.digests), catalog), [])]


def compute(section: CorpusSection, inputs: dict[str, Path], out: Path, env: StageEnv) -> StageOutput:
    """Write `corpus.jsonl`; report documents, bytes, characters and what cleaning changed or dropped."""
    from gpt.data.corpus import build_corpus, corpus_sources

    check_unchanged(section.files, source_digests(section.corpus, env.digest_cache()), env.name)
    c = section.corpus
    mixture = [(source, weight) for _, source, weight in corpus_sources(c)]
    stats = build_corpus(mixture, out / CORPUS_FILE, env.cache_dir, c, c.max_bytes)
    summary = {k: v for k, v in asdict(stats).items() if k not in ("files", "source_bytes")}
    return StageOutput(summary=summary, info={"files": stats.files, "source_bytes": stats.source_bytes})


DEFINITION = StageDef(
    kind="corpus",
    version="2",
    doc="cleaned documents from one source or a weighted mixture",
    instances=plan_corpus,
    compute=compute,
    outputs=(CORPUS_FILE,),
    retries=2,  # downloads
)
