"""Precision and compilation on this machine: fp32 vs bf16 autocast vs torch.compile, side by side.

Each variant trains the same model from the same seed on the same real text (tiny Shakespeare, a BPE
trained here) through the real `gpt.train.pretrain.pretrain`, for the same number of steps; rounds
alternate the variants. Prints per variant: steady-state tokens/s and ms/step, the ratio to fp32,
the first steps' extra time (compilation, measured as the warmup steps' time beyond steady state) and
the validation loss at the end, which must not be worse for a faster variant to pay.

    python benchmarks/precision.py                        # the demo's model, 60 steps, 3 rounds
    python benchmarks/precision.py --config configs/demo.yaml --steps 100 --rounds 3
    python benchmarks/precision.py --variants 32-true bf16-mixed bf16-mixed+compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt.config.loader import load_config  # noqa: E402
from gpt.data.shards import encode_corpus  # noqa: E402
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, train_bpe  # noqa: E402
from gpt.train.pretrain import pretrain  # noqa: E402

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


class StepClock(L.Callback):
    """perf_counter at the end of every optimizer step (index = global step after it)."""

    def __init__(self) -> None:
        self.t_start = 0.0
        self.ends: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        self.ends.append(time.perf_counter())


def make_shards(out: Path, text: Path, vocab: int) -> int:
    """Tiny Shakespeare as paragraph documents, a BPE of `vocab` tokens trained on it, encoded to shards."""
    docs = [p.strip() for p in text.read_text().split("\n\n") if p.strip()]
    (out / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    enc = build_encoding(train_bpe(docs, vocab), SPLIT_PATTERN)
    encode_corpus(out / "corpus.jsonl", enc, out, 0.05, seed=0)
    return enc.n_vocab


def parse_variant(name: str) -> tuple[str, bool]:
    """'bf16-mixed+compile' -> ('bf16-mixed', True)."""
    precision, _, extra = name.partition("+")
    return precision, extra == "compile"


def main(argv: list[str] | None = None) -> int:
    """Alternate the variants, then print medians, ratios to the first variant, compile time and val loss."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variants", nargs="+", default=["32-true", "bf16-mixed", "bf16-mixed+compile"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps before the steady-state window")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    never = args.steps + 1
    tcfg = replace(cfg.pretrain, max_steps=args.steps, val_every=never, ckpt_every=never, val_batches=8)
    rows: dict[str, dict[str, list[float]]] = {v: {"tps": [], "extra": [], "val": []} for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        vocab = make_shards(Path(tmp), TEXT, cfg.tokenizer.vocab_size)
        gcfg = cfg.model.with_vocab(vocab)
        tokens_per_step = tcfg.batch_size * gcfg.block_size
        print(
            f"model {gcfg.n_layer}x{gcfg.n_embd} ctx {gcfg.block_size} vocab {vocab} batch {tcfg.batch_size} | "
            f"{args.steps} steps ({args.warmup} warmup) x {args.rounds} rounds | threads {torch.get_num_threads()} | "
            f"CPU bf16: {'avx512_bf16' in Path('/proc/cpuinfo').read_text()}"
        )
        for r in range(args.rounds):
            order = args.variants if r % 2 == 0 else list(reversed(args.variants))
            for name in order:
                precision, compiled = parse_variant(name)
                clock = StepClock()
                run_cfg = replace(tcfg, precision=precision, compile=compiled)
                ckpt = Path(tmp) / f"ckpt-{name}-{r}"
                _, result = pretrain(gcfg, run_cfg, Path(tmp), ckpt, 0, extra_callbacks=[clock])
                steady = (clock.ends[-1] - clock.ends[args.warmup - 1]) / (args.steps - args.warmup)
                extra = (clock.ends[args.warmup - 1] - clock.t_start) - args.warmup * steady
                tps = tokens_per_step / steady
                rows[name]["tps"].append(tps)
                rows[name]["extra"].append(extra)
                rows[name]["val"].append(result.final_val_loss)
                print(
                    f"round {r + 1} {name:<20} {tps:>9,.0f} tokens/s {1000 * steady:8.1f} ms/step "
                    f"first-steps extra {extra:6.1f} s  val_loss {result.final_val_loss:.4f}"
                )
    base = statistics.median(rows[args.variants[0]]["tps"])
    print(f"\nmedians over {args.rounds} rounds (ratio: tokens/s against {args.variants[0]})")
    for name, row in rows.items():
        tps = statistics.median(row["tps"])
        print(
            f"{name:<20} {tps:>9,.0f} tokens/s {1000 * tokens_per_step / tps:8.1f} ms/step  ratio {tps / base:5.2f}  "
            f"compile/first-steps extra {statistics.median(row['extra']):6.1f} s  "
            f"val_loss {statistics.median(row['val']):.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
