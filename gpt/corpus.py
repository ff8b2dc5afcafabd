"""Turn a corpus source into clean documents: decode, normalise line endings, strip Gutenberg boilerplate."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpt.sources import (
    CATALOG,
    MIRROR_SCHEME,
    SourceError,
    download,
    fetch,
    parse_hf,
    resolve_local,
    resolve_mirror,
)


@dataclass
class CorpusStats:
    """What the corpus stage reports: documents, bytes, characters, repaired bytes."""

    documents: int = 0
    bytes: int = 0
    characters: int = 0
    bad_bytes_replaced: int = 0
    gutenberg_stripped: int = 0
    files: list[str] = field(default_factory=list)


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


def _read_file(path: Path) -> Iterator[bytes | str]:
    """Raw documents in a file: one per .txt/.txt.gz file, one per line of .jsonl (its `text`)."""
    name = path.name
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            data = f.read()
        name = name[:-3]
    else:
        data = path.read_bytes()
    if name.endswith(".jsonl"):
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SourceError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from None
    else:
        yield data


def raw_documents(source: str, cache_dir: Path) -> Iterator[tuple[str, bytes | str]]:
    """(origin, raw document) pairs for any source kind."""
    if source.startswith("hf://"):
        yield from _hf_documents(source)
        return
    if source in CATALOG:
        paths = [fetch(remote, cache_dir) for remote in CATALOG[source]]
    elif source.startswith("https://"):
        url, _, digest = source.partition("#sha256=")
        paths = [download(url, digest, cache_dir)]
    elif source.startswith(MIRROR_SCHEME):
        paths = resolve_mirror(source)
    else:
        paths = resolve_local(source)
    for path in paths:
        for doc in _read_file(path):
            yield str(path), doc


def _hf_documents(source: str) -> Iterator[tuple[str, str]]:
    """Stream the text column of a Hugging Face dataset (pinned revision and split)."""
    import datasets

    name, config, opts = parse_hf(source)
    split = opts.get("split", "train")
    column = opts.get("column", "text")
    ds = datasets.load_dataset(name, config, split=split, revision=opts.get("revision"), streaming=True)
    for row in ds:
        yield f"{source}", row[column]


def build_corpus(
    source: str, out_file: Path, cache_dir: Path, strip_pg: bool = True, max_bytes: int | None = None
) -> CorpusStats:
    """Write the cleaned documents of `source` to `out_file` as JSONL ({"text": ...}) and return stats."""
    stats = CorpusStats()
    with open(out_file, "w", encoding="utf-8") as out:
        for origin, raw in raw_documents(source, cache_dir):
            if max_bytes is not None and stats.bytes >= max_bytes:
                break
            if isinstance(raw, bytes):
                text, bad = decode(raw)
                stats.bad_bytes_replaced += bad
            else:
                text = raw
            text = normalise_newlines(text)
            if strip_pg:
                text, stripped = strip_gutenberg(text)
                stats.gutenberg_stripped += stripped
            if not text.strip():
                continue
            if max_bytes is not None:
                text = text.encode()[: max_bytes - stats.bytes].decode("utf-8", errors="ignore")
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            stats.documents += 1
            stats.bytes += len(text.encode())
            stats.characters += len(text)
            if origin not in stats.files:
                stats.files.append(origin)
    if stats.documents == 0:
        raise SourceError(f"corpus source {source!r} produced no text (empty files?)")
    return stats


def read_documents(corpus_file: Path) -> Iterator[str]:
    """Documents back from the corpus JSONL."""
    with open(corpus_file, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]
