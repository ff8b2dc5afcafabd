"""Time to digest a local corpus folder cold (every byte read) vs with remembered digests (`tasks.content`).

Builds once, and reuses, a corpus folder of `--gb` GiB of ~10 MiB text files made by repeating the
Gutenberg books of the data mirror (`$GPTFLOW_MIRROR`, else `../shared/data`). Then, in alternating
rounds: "cold" is a fresh DigestCache with no memory file hashing every file (what the first cached
rerun on a new machine pays); "remembered" is a fresh DigestCache reading a memory file an earlier pass
saved (what every later cached rerun pays). Before the first round the corpus is evicted from the page
cache (posix_fadvise DONTNEED) so that round reads from disk; later cold rounds read from page cache
unless `--evict-every-round`. With `--pipeline CONFIG` it also times two cached reruns of
`gptflow run` on the folder, one without `<workspace>/digests.json` and one with it.

    python benchmarks/content_hash.py [--gb 1.0 | --quick] [--rounds 3] [--dir DIR] [--evict-every-round] \\
        [--pipeline configs/micro.yaml --set pretrain.max_steps=1 ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.content import DigestCache

ROOT = Path(__file__).resolve().parents[1]
FILE_MIB = 10
MARKER = ".gptflow-bench-corpus.json"  # a dot-file: corpus sources skip it


def mirror_dir() -> Path:
    """The data mirror: `$GPTFLOW_MIRROR`, else `../shared/data` beside the repository."""
    env = os.environ.get("GPTFLOW_MIRROR")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    if not path.is_dir():
        sys.exit(f"no data mirror at {path}: set GPTFLOW_MIRROR")
    return path


def book_text(mirror: Path) -> bytes:
    """The Gutenberg books of the mirror, concatenated, with LF line endings."""
    folders = sorted(p for p in mirror.glob("gutenberg*") if p.is_dir())
    books = sorted(p for folder in folders for p in folder.rglob("*") if p.name.endswith((".txt", ".txt.gz")))
    if not books:
        sys.exit(f"no gutenberg*/**/*.txt[.gz] books under {mirror}")
    parts = [(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()) for p in books]
    return b"\n".join(parts).replace(b"\r\n", b"\n")


def corpus_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.txt"))


def build_corpus(folder: Path, gb: float) -> list[Path]:
    """`folder` holding about `gb` GiB of ~10 MiB text files; reused when a previous build is complete."""
    n = max(1, round(gb * 1024 / FILE_MIB))
    marker = folder / MARKER
    want = {"files": n, "file_mib": FILE_MIB}
    try:
        if json.loads(marker.read_text()) == want and len(corpus_files(folder)) == n:
            return corpus_files(folder)
    except (OSError, ValueError):
        pass
    print(f"building {n} files of ~{FILE_MIB} MiB in {folder} ...", flush=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    text = book_text(mirror_dir())
    size = FILE_MIB << 20
    reps = size // len(text) + 2
    tape = text * reps  # long enough for any window
    for i in range(n):
        start = (i * 7_919_993) % len(text)  # a different window of the books per file
        start = tape.index(b"\n", start) + 1
        end = tape.rindex(b"\n", start, start + size) + 1  # whole lines, so valid UTF-8
        path = folder / f"part-{i:04d}.txt"
        with open(path, "wb") as f:
            f.write(tape[start:end])
            f.flush()
            os.fsync(f.fileno())  # clean pages, so they can be evicted
    marker.write_text(json.dumps(want))
    return corpus_files(folder)


def age(paths: list[Path], seconds: float = 60.0) -> None:
    """Set mtimes `seconds` in the past, beyond the racy-clean window, so digests are remembered."""
    then = time.time_ns() - int(seconds * 1e9)
    for p in paths:
        os.utime(p, ns=(then, then))


def evict(paths: list[Path]) -> bool:
    """Drop the files' clean pages from the page cache (best effort); False where not supported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def digest_pass(paths: list[Path], memory: Path | None, label: str) -> tuple[float, DigestCache, dict[str, str]]:
    """Seconds for a fresh DigestCache (reading `memory` if given) to digest `paths`."""
    t0 = time.perf_counter()
    cache = DigestCache(memory)
    digests = cache.files(paths, label)
    return time.perf_counter() - t0, cache, digests


def time_pipeline(args: argparse.Namespace, folder: Path) -> None:
    """Wall time of two cached `gptflow run`s on the corpus: without and with `<workspace>/digests.json`."""
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="gptflow-content-bench-ws-"))
    exe = ROOT / ".venv" / "bin" / "gptflow"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    sets = [a for s in [f"corpus.source={folder}", *args.overrides] for a in ("--set", s)]
    cmd = [*cli, "run", "--config", args.pipeline, *sets, "--workspace", str(ws)]
    memory = ws / "digests.json"

    def run(what: str) -> float:
        print(f"pipeline {what}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL if args.quiet_pipeline else None)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"gptflow run failed ({what}), exit status {done.returncode}")
        return seconds

    first = run("populating run")
    if not memory.exists():
        print(f"warning: {memory} was not written; the CLI may not use tasks.content yet")
    without, with_memory = [], []
    for i in range(args.rounds):  # alternating, so drift on a shared machine hits both alike
        memory.unlink(missing_ok=True)
        without.append(run(f"round {i + 1}: cached rerun without digests.json"))  # hashes every corpus file
        with_memory.append(run(f"round {i + 1}: cached rerun with digests.json"))
    print(f"\npipeline ({args.pipeline}, workspace {ws})")
    print("| round | digests.json deleted (s) | digests.json present (s) | difference = hashing (s) |")
    print("|---|---|---|---|")
    for i, (a, b) in enumerate(zip(without, with_memory, strict=True)):
        print(f"| {i + 1} | {a:.1f} | {b:.1f} | {a - b:.1f} |")
    mw, mm = statistics.median(without), statistics.median(with_memory)
    print(f"| median | {mw:.1f} | {mm:.1f} | {mw - mm:.1f} |")
    print(f"populating run: {first:.1f} s; cached rerun ratio without/with digests: {mw / mm:.2f}")


def main() -> None:
    """Print cold and remembered digest times per round, their medians and ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="corpus size in GiB (default 1.0)")
    parser.add_argument("--quick", action="store_true", help="a 0.05 GiB corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="corpus folder (default: gptflow-bench-corpus-<gb>gb in the temp dir)")
    parser.add_argument("--evict-every-round", action="store_true", help="evict the page cache before every cold pass")
    parser.add_argument("--pipeline", metavar="CONFIG", help="also time cached `gptflow run`s with this config")
    parser.add_argument("--workspace", help="workspace for --pipeline (default: a new temp dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for --pipeline")
    parser.add_argument("--quiet-pipeline", action="store_true", help="hide the pipeline runs' stdout")
    args = parser.parse_args()
    gb = 0.05 if args.quick else args.gb
    folder = args.dir or Path(tempfile.gettempdir()) / f"gptflow-bench-corpus-{gb:g}gb"
    paths = build_corpus(folder, gb)
    age(paths)
    mb = sum(p.stat().st_size for p in paths) / 1e6
    label = str(folder)

    scratch = Path(tempfile.mkdtemp(prefix="gptflow-content-bench-"))
    memory = scratch / "digests.json"
    evicted = evict(paths)
    rows: list[tuple[float, float, str]] = []
    try:
        for r in range(args.rounds):
            if r > 0 and args.evict_every_round:
                evict(paths)
            from_disk = evicted and (r == 0 or args.evict_every_round)
            # round 1's cold pass also writes the memory the remembered passes read (saved after the timing)
            cold_s, cold, expected = digest_pass(paths, memory if r == 0 else None, label)
            assert cold.stats.hashed_files == len(paths), cold.stats
            if r == 0:
                cold.save()
            warm_s, warm, digests = digest_pass(paths, memory, label)
            assert digests == expected
            if warm.stats.remembered_files != len(paths):
                print(f"warning: only {warm.stats.remembered_files} of {len(paths)} files were remembered")
            rows.append((cold_s, warm_s, "disk" if from_disk else "page cache"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\ncorpus {folder}: {len(paths)} files, {mb:.0f} MB (MB = 10^6 bytes), {args.rounds} rounds")
    print("| round | cold s | cold MB/s | cold read from | remembered s | remembered MB/s | cold/remembered |")
    print("|---|---|---|---|---|---|---|")
    for r, (cold_s, warm_s, source) in enumerate(rows, 1):
        print(
            f"| {r} | {cold_s:.3f} | {mb / cold_s:.0f} | {source} | {warm_s:.4f} | {mb / warm_s:.0f} | "
            f"{cold_s / warm_s:.0f} |"
        )
    cold_med = statistics.median(c for c, _, _ in rows)
    warm_med = statistics.median(w for _, w, _ in rows)
    print(
        f"| median | {cold_med:.3f} | {mb / cold_med:.0f} | | {warm_med:.4f} | {mb / warm_med:.0f} | "
        f"{cold_med / warm_med:.0f} |"
    )
    first_cold, first_warm, first_source = rows[0]
    print(
        f"\nfirst round (cold read from {first_source}): {first_cold:.3f} s, {mb / first_cold:.0f} MB/s, "
        f"{first_cold / first_warm:.0f}x the remembered pass"
    )
    if evicted:
        print("note: 'disk' means the files were evicted from the page cache first (a VM's host may still cache them)")
    else:
        print("note: posix_fadvise is not available here, so no cold pass is guaranteed to read from disk")
    if not args.evict_every_round and args.rounds > 1:
        print("note: cold rounds after the first read the files from the OS page cache (hashing speed, not disk)")

    if args.pipeline:
        time_pipeline(args, folder)


if __name__ == "__main__":
    main()
