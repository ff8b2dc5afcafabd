"""Turn corpus sources into clean documents, streamed: decode, normalise, dedup, mix by weight.

Every reader yields documents one at a time (a .txt file is one document, a .jsonl line or a
parquet row is one), so the corpus size bounds neither memory nor the mixture.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpt.data.config import CorpusConfig
from gpt.data.sources import (
    CATALOG,
    MIRROR_SCHEME,
    TASK_SCHEME,
    SourceError,
    check_source,
    download,
    fetch,
    hf_mirror_files,
    hf_offline_hint,
    parse_hf,
    resolve_local,
    resolve_mirror,
)

TEXT_COLUMN = "text"


@dataclass
class CorpusStats:
    """What the corpus stage reports: documents, bytes, characters, what cleaning changed or dropped."""

    documents: int = 0
    bytes: int = 0
    characters: int = 0
    bad_bytes_replaced: int = 0
    gutenberg_stripped: int = 0
    unicode_fixed: int = 0  # documents ftfy changed
    lines_unwrapped: int = 0  # line breaks inside paragraphs joined (unwrap_lines)
    duplicates_dropped: int = 0
    empty_dropped: int = 0
    files: list[str] = field(default_factory=list)
    source_bytes: dict[str, int] = field(default_factory=dict)  # cleaned bytes kept per source


@dataclass(frozen=True)
class RawDocument:
    """A decoded document before cleaning, with where it came from and how many bytes were bad."""

    origin: str
    text: str
    bad_bytes: int = 0


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Keep the text between the `*** START OF` and `*** END OF` lines when both are present."""
    start = text.find("*** START OF")
    end = text.find("*** END OF")
    if start < 0 or end < 0 or end < start:
        return text, False
    body_start = text.find("\n", start)
    return text[body_start + 1 : end].strip("\n") + "\n", True


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 decode that never fails: bad bytes become U+FFFD and are counted."""
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")


def normalise_newlines(text: str) -> str:
    """CRLF and lone CR to LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


_UNICODE_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


_WRAPPED_LINE_BREAK = re.compile(r"(?<=\S)[ \t]*\n[ \t]*(?=\S)")  # a single newline between two text lines


def unwrap_lines(text: str) -> tuple[str, int]:
    """Paragraphs hard-wrapped at a fixed width (Project Gutenberg's ~70 characters) joined into one line
    each, with a space; blank lines still separate paragraphs. Returns the text and the breaks joined.

    The tasks' inputs are single lines: a model pretrained on wrapped text spends capacity predicting
    line breaks in mid-sentence that fine-tuning never shows it.
    """
    return _WRAPPED_LINE_BREAK.subn(" ", text)


def normalise_whitespace(text: str) -> str:
    """Unicode spaces to ' ', no trailing spaces on a line, at most one blank line in a row, no outer blanks."""
    text = _UNICODE_SPACES.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _file_documents(path: Path, filename: str | None = None) -> Iterator[RawDocument]:
    """Documents in one file: a .txt(.gz) file is one; each .jsonl(.gz) line and each .parquet row is one.

    The format follows `filename` (default: the path's name), e.g. the URL's name for a download.
    """
    name = filename or path.name
    opener = gzip.open if name.endswith(".gz") else open
    name = name.removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _parquet_documents(path)
    elif name.endswith(".jsonl"):
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                text, bad = decode(line)
                try:
                    value = json.loads(text)[TEXT_COLUMN]
                except (json.JSONDecodeError, KeyError, TypeError):
                    value = None
                if not isinstance(value, str):
                    raise SourceError(f"{path}:{lineno}: expected a JSON object with a string '{TEXT_COLUMN}' field")
                yield RawDocument(str(path), value, bad)
    else:
        with opener(path, "rb") as f:
            text, bad = decode(f.read())
        yield RawDocument(str(path), text, bad)


def _parquet_documents(path: Path) -> Iterator[RawDocument]:
    """The text column of a parquet file, read in record batches."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if TEXT_COLUMN not in pf.schema_arrow.names:
        raise SourceError(f"{path}: no '{TEXT_COLUMN}' column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[TEXT_COLUMN], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield RawDocument(str(path), value)


def _hf_documents(source: str) -> Iterator[RawDocument]:
    """A hub split's text column: from the mirror if it has it, else through `datasets`.

    Online the split is streamed; with HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set it is read from the
    `datasets` cache, and a miss fails at once with a message saying how to provide it.
    """
    mirrored = hf_mirror_files(source)
    if mirrored:
        for path in mirrored:
            yield from _file_documents(path)
        return
    import datasets

    name, config, opts = parse_hf(source)
    column = opts.get("column", TEXT_COLUMN)
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    try:
        ds = datasets.load_dataset(
            name, config, split=opts.get("split", "train"), revision=opts.get("revision"), streaming=not offline
        )
        rows = iter(ds)
        first = next(rows, None)
    except OSError as e:  # offline mode, no network, unknown data set or revision
        raise SourceError(
            f"cannot load {source} ({type(e).__name__}: {e}); {hf_offline_hint(source)}",
            transient=not offline and not isinstance(e, FileNotFoundError),  # network trouble: retried
        ) from None
    for row in itertools.chain([first], rows) if first is not None else ():
        if column not in row:
            raise SourceError(f"{source}: no column '{column}' (columns: {', '.join(row)}); add &column=<name>")
        yield RawDocument(source, row[column])


def _task_documents(source: str, cache_dir: Path) -> Iterator[RawDocument]:
    """A `task:<name>` source's documents: a built-in task's training inputs, no labels (gpt.downstream.builtin)."""
    from gpt.downstream.builtin import task_inputs  # the task loaders read this package's sources

    for text in task_inputs(source, cache_dir):
        yield RawDocument(source, text)


def source_documents(source: str, cache_dir: Path) -> Iterator[RawDocument]:
    """Decoded documents of one source, any kind, in a fixed order."""
    if source.startswith(TASK_SCHEME):
        yield from _task_documents(source, cache_dir)
        return
    if source.startswith("hf://"):
        yield from _hf_documents(source)
        return
    if source in CATALOG:
        paths: Iterable[Path] = (fetch(remote, cache_dir) for remote in CATALOG[source])  # lazily: max_bytes
    elif source.startswith("https://"):
        url, _, digest = source.partition("#sha256=")
        yield from _file_documents(download(url, digest, cache_dir), filename=url.split("?")[0].rsplit("/", 1)[-1])
        return
    elif source.startswith(MIRROR_SCHEME):
        paths = resolve_mirror(source)
    else:
        paths = resolve_local(source)
    for path in paths:
        yield from _file_documents(path)


def clean(doc: RawDocument, cleaning: CorpusConfig, stats: CorpusStats) -> str:
    """One document through the normalisation steps; counts what each step changed."""
    text = normalise_newlines(doc.text)
    stats.bad_bytes_replaced += doc.bad_bytes
    if cleaning.fix_unicode:
        import ftfy

        fixed = ftfy.fix_text(text)
        stats.unicode_fixed += fixed != text
        text = fixed
    if cleaning.strip_gutenberg:
        text, stripped = strip_gutenberg(text)
        stats.gutenberg_stripped += stripped
    if cleaning.normalize_whitespace:
        text = normalise_whitespace(text)
    if cleaning.unwrap_lines:
        text, joined = unwrap_lines(text)
        stats.lines_unwrapped += joined
    if cleaning.lowercase:
        text = text.lower()
    return text


def mix(streams: list[Iterator[str]], weights: list[float]) -> Iterator[tuple[int, str]]:
    """Interleave cleaned document streams so each one's share of the bytes follows its weight.

    The next document always comes from the stream furthest below its share; the mixture ends when
    the first stream runs out, so the shares hold (the `first_exhausted` rule of
    `datasets.interleave_datasets`, by bytes instead of by rows).
    """
    used = [0] * len(streams)
    while True:
        i = min(range(len(streams)), key=lambda k: (used[k] / weights[k], k))
        text = next(streams[i], None)
        if text is None:
            return
        used[i] += len(text.encode())
        yield i, text


def _cleaned(
    source: str, cache_dir: Path, cleaning: CorpusConfig, stats: CorpusStats, seen: set[bytes], has_text: set[str]
) -> Iterator[str]:
    """Cleaned, non-empty, not-yet-seen documents of one source (`seen` is shared across a mixture).

    Adds `source` to `has_text` once it yields a non-empty document, duplicate or not.
    """
    for doc in source_documents(source, cache_dir):
        text = clean(doc, cleaning, stats)
        if not text.strip():
            stats.empty_dropped += 1
            continue
        has_text.add(source)
        if cleaning.dedup:
            digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if digest in seen:
                stats.duplicates_dropped += 1
                continue
            seen.add(digest)
        if doc.origin not in stats.files:
            stats.files.append(doc.origin)
        yield text


def build_corpus(
    sources: str | list[tuple[str, float]],
    out_file: Path,
    cache_dir: Path,
    cleaning: CorpusConfig | None = None,
    max_bytes: int | None = None,
) -> CorpusStats:
    """Write the cleaned documents of one source or a weighted mixture to `out_file` as JSONL ({"text": ...}).

    Streams end to end: only the digests of documents seen (for dedup) are kept in memory.
    """
    mixture = [(sources, 1.0)] if isinstance(sources, str) else list(sources)
    cleaning = cleaning or CorpusConfig()
    stats = CorpusStats(source_bytes={s: 0 for s, _ in mixture})
    seen: set[bytes] = set()
    has_text: set[str] = set()
    streams = [_cleaned(s, cache_dir, cleaning, stats, seen, has_text) for s, _ in mixture]
    with open(out_file, "w", encoding="utf-8") as out:
        for i, text in mix(streams, [w for _, w in mixture]):
            if max_bytes is not None:
                text = text.encode()[: max_bytes - stats.bytes].decode("utf-8", errors="ignore")
                if not text:  # the cap fell inside the first character
                    break
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            n = len(text.encode())
            stats.documents += 1
            stats.bytes += n
            stats.characters += len(text)
            stats.source_bytes[mixture[i][0]] += n
            if max_bytes is not None and stats.bytes >= max_bytes:
                break  # before the next document is read and cleaned
    capped = max_bytes is not None and stats.bytes >= max_bytes
    empty = [s for s, _ in mixture if s not in has_text]
    if empty and not capped:  # a capped mixture may not have reached every source
        raise SourceError(f"corpus source {empty[0]!r} produced no text (empty files?)")
    return stats


def corpus_sources(corpus: CorpusConfig) -> list[tuple[str, str, float]]:
    """(config key, source, weight) of a `corpus` config section: `sources` when set, else `source`."""
    if corpus.sources:
        return [(f"corpus.sources[{i}].source", s.source, s.weight) for i, s in enumerate(corpus.sources)]
    return [("corpus.source", corpus.source, 1.0)]


def check_corpus_sources(corpus: CorpusConfig) -> None:
    """Fail fast on a malformed or missing source, naming its config key."""
    for key, source, _ in corpus_sources(corpus):
        try:
            check_source(source)
            if source.startswith(TASK_SCHEME):
                from gpt.downstream.builtin import task_catalog_entries

                task_catalog_entries(source)
        except SourceError as e:
            raise SourceError(f"config key '{key}': {e}") from None


def read_documents(corpus_file: Path) -> Iterator[str]:
    """Documents back from the corpus JSONL, one at a time."""
    with open(corpus_file, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]
