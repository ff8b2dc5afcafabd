"""Tokenizer and encode benchmark on the Gutenberg books (issue 3's performance targets).

Prints, for one vocab size on this machine:
  - BPE training: rustbpe (what the `tokenizer` stage uses) vs HF tokenizers' BpeTrainer, same text;
  - encode throughput: the `encode` stage (`gpt.data.shards.encode_corpus`, JSONL in, shards out) vs raw
    tiktoken `encode_ordinary_batch` (with as many threads) on the same documents and encoding, and
    vs HF tokenizers' `encode_batch` with its own BPE of the same vocab size;
  - peak RSS of encoding a corpus of `--size-mb` built by repeating the books, in a fresh
    subprocess (its threads share its memory): the child's VmHWM from /proc (Linux). ru_maxrss
    would not do: a forked child inherits the benchmark's own high-water mark through exec.

    .venv/bin/python benchmarks/tokenizer.py                 # full: 8192 vocab, all books, 1 GB for RSS
    .venv/bin/python benchmarks/tokenizer.py --quick         # smoke test in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt.data.corpus import build_corpus, read_documents  # noqa: E402
from gpt.data.shards import encode_corpus  # noqa: E402
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, load_tokenizer, save_tokenizer, train_bpe  # noqa: E402


def timed(fn):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def hf_train(docs: list[str], vocab_size: int):
    """HF tokenizers byte-level BPE with the same split pattern, trained by BpeTrainer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def run_child(cmd: list[str]) -> dict:
    """Run `cmd` and parse the JSON object on the last line of its stdout."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"encoding subprocess failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeat_corpus(corpus: Path, out: Path, size_bytes: int) -> int:
    """Write `corpus`'s lines again and again into `out` until it holds at least `size_bytes`."""
    lines = corpus.read_bytes().splitlines(keepends=True)
    written = 0
    with open(out, "wb") as f:
        while written < size_bytes:
            for line in lines:
                f.write(line)
                written += len(line)
    return written


def encode_child(corpus: str, tok_dir: str, out_dir: str, workers: int) -> None:
    """The measured process: encode `corpus`, print tokens, seconds and this process's peak RSS as JSON."""
    stats = encode_corpus(Path(corpus), load_tokenizer(tok_dir), Path(out_dir), 0.05, 0, workers=workers)
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    tokens = stats.train_tokens + stats.val_tokens
    print(json.dumps({"tokens": tokens, "seconds": stats.seconds, "peak": hwm_kib * 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--corpus-mb", type=float, default=None, help="cap on the books' text (default: all 48)")
    ap.add_argument("--size-mb", type=float, default=1024, help="size of the repeated corpus for peak RSS")
    ap.add_argument("--workers", type=int, default=None, help="encode threads (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 MB of books, 1024 vocab, 16 MB RSS corpus")
    ap.add_argument("--child", nargs=3, metavar=("CORPUS", "TOK_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    workers = args.workers or os.cpu_count() or 1
    if args.child:
        encode_child(*args.child, workers=workers)
        return
    if args.quick:
        args.vocab_size, args.corpus_mb, args.size_mb = 1024, 3, 16

    with tempfile.TemporaryDirectory(prefix="gptflow-bench-") as tmp:
        tmp = Path(tmp)
        max_bytes = int(args.corpus_mb * 1e6) if args.corpus_mb else None
        build_corpus("gutenberg", tmp / "corpus.jsonl", tmp / "dl", max_bytes=max_bytes)
        docs = list(read_documents(tmp / "corpus.jsonl"))
        mb = sum(len(d.encode()) for d in docs) / 1e6
        print(f"corpus: {len(docs)} Gutenberg documents, {mb:.1f} MB; vocab {args.vocab_size}; {workers} cores")

        ranks, t_rust = timed(lambda: train_bpe(docs, args.vocab_size))
        hf_tok, t_hf_train = timed(lambda: hf_train(docs, args.vocab_size))
        print(f"train  rustbpe        {t_rust:8.2f} s  {mb / t_rust:7.1f} MB/s")
        hf_vocab = hf_tok.get_vocab_size()
        print(f"train  HF BpeTrainer  {t_hf_train:8.2f} s  {mb / t_hf_train:7.1f} MB/s  (vocab {hf_vocab})")

        enc = build_encoding(ranks, SPLIT_PATTERN)
        save_tokenizer(enc, ranks, tmp / "tok")
        _, t_raw = timed(lambda: enc.encode_ordinary_batch(docs, num_threads=workers))  # as many threads as ours
        (tmp / "shards").mkdir()
        _, t_stage = timed(lambda: encode_corpus(tmp / "corpus.jsonl", enc, tmp / "shards", 0.05, 0, workers=workers))
        _, t_hf = timed(lambda: hf_tok.encode_batch(docs))
        print(f"encode stage (JSONL -> shards)        {t_stage:8.2f} s  {mb / t_stage:7.1f} MB/s")
        print(f"encode tiktoken encode_ordinary_batch {t_raw:8.2f} s  {mb / t_raw:7.1f} MB/s")
        print(f"encode HF tokenizers encode_batch     {t_hf:8.2f} s  {mb / t_hf:7.1f} MB/s")

        size = repeat_corpus(tmp / "corpus.jsonl", tmp / "big.jsonl", int(args.size_mb * 1e6))
        (tmp / "big").mkdir()
        cmd = [sys.executable, __file__, "--child", str(tmp / "big.jsonl"), str(tmp / "tok"), str(tmp / "big")]
        result = run_child([*cmd, "--workers", str(workers)])
        peak = result["peak"]
        print(
            f"encode {size / 1e6:.0f} MB corpus: {result['seconds']:.1f} s ({size / 1e6 / result['seconds']:.1f} MB/s "
            f"incl. JSONL bytes), {result['tokens']:,} tokens, peak RSS {peak / 2**30:.2f} GiB"
        )

        print("\nratios (target)")
        print(f"  encode stage / raw tiktoken     {t_raw / t_stage:5.2f}x  (>= 0.9)")
        print(f"  encode stage / HF tokenizers    {t_hf / t_stage:5.2f}x  (>= 3)")
        print(f"  rustbpe / HF BpeTrainer time    {t_rust / t_hf_train:5.2f}   (<= 1)")
        print(f"  peak RSS, {size / 1e9:.2f} GB corpus     {peak / 1e9:5.2f} GB (<= 2)")


if __name__ == "__main__":
    main()
