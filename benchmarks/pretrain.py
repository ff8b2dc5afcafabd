"""Pretraining throughput: the real `pretrain` code path against a bare PyTorch loop.

The real path is `gpt.train.pretrain.pretrain` (Lightning Trainer, checkpoint/throughput/NaN callbacks,
progress bar) logging to the stage's MLflow logger over a temporary SQLite store. The bare loop
trains the same model (same init, AdamW groups, schedule, clipping, precision, compile) on the same
batches. Rounds alternate the two; steady-state tokens/s is timed from step `--warmup` to the end.
Prints tokens/s, step time and MFU per round, then medians and the ratio (goal: >= 0.97).

    python benchmarks/pretrain.py --quick                       # seconds: smoke test
    python benchmarks/pretrain.py --config configs/demo.yaml    # CPU figures
    python benchmarks/pretrain.py --config configs/gpt2-small.yaml --set pretrain.tokens_per_step=null
                                                                # GPU: bf16-mixed + torch.compile by default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt.config.loader import load_config  # noqa: E402
from gpt.data.shards import encode_corpus  # noqa: E402
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, train_bpe  # noqa: E402
from gpt.data.windows import RandomWindows  # noqa: E402
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT  # noqa: E402
from gpt.train.callbacks import measure_peak_flops  # noqa: E402
from gpt.train.config import PretrainConfig  # noqa: E402
from gpt.train.optim import adamw, warmup_cosine  # noqa: E402
from gpt.train.pretrain import accumulation, pretrain, resolve_precision  # noqa: E402

WORDS = ("the", "king", "a", "cat", "sea", "lived", "by", "once", "upon", "time", "story", "told", "of", "and")


def make_shards(out: Path, n_docs: int, seed: int = 0) -> Path:
    """Synthetic documents encoded through the real encode path (content does not affect speed)."""
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, size=400)) + "." for _ in range(n_docs)]
    (out / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    enc = build_encoding(train_bpe(docs[:200], 300), SPLIT_PATTERN)
    encode_corpus(out / "corpus.jsonl", enc, out, 0.05, seed=seed)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time from the first micro-batch of optimizer step `start` to the end of step `end`."""

    def __init__(self, start: int, end: int, device: torch.device):
        self.start, self.end, self.device = start, end, device
        self.t0: float | None = None
        self.t1: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *_) -> None:
        if self.t0 is None and trainer.global_step == self.start:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if self.t1 is None and trainer.global_step == self.end:
            sync(self.device)
            self.t1 = time.perf_counter()


def lightning_round(gcfg: ModelConfig, tcfg: PretrainConfig, shards: Path, warmup: int, device: torch.device) -> float:
    """Seconds for the timed steps through the real pretrain() with the MLflow stage logger."""
    from mlflow.tracking import MlflowClient

    from tasks.mlflow_logger import stage_logger

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        exp = client.create_experiment("bench", artifact_location=Path(tmp, "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        timer = StepTimer(warmup, tcfg.max_steps, device)
        logger = stage_logger(uri, run_id)
        pretrain(gcfg, tcfg, shards, Path(tmp) / "ckpt", seed=0, logger=logger, extra_callbacks=[timer])
        assert timer.t0 is not None and timer.t1 is not None
        return timer.t1 - timer.t0


def bare_round(gcfg: ModelConfig, tcfg: PretrainConfig, shards: Path, warmup: int, device: torch.device) -> float:
    """Seconds for the timed steps of a plain PyTorch loop doing the same work."""
    torch.manual_seed(0)
    model = GPT(gcfg).to(device)
    use_compile = tcfg.compile if tcfg.compile is not None else device.type == "cuda"
    loss_of = torch.compile(model.next_token_loss) if use_compile else model.next_token_loss
    model.train()
    opt = adamw(model, tcfg.lr, tcfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(tcfg.warmup_steps, tcfg.max_steps, tcfg.min_lr_ratio))
    accumulate = accumulation(tcfg, gcfg.block_size)
    batches = iter(DataLoader(RandomWindows(shards, gcfg.block_size, tcfg.batch_size, 0, lambda: 0), batch_size=None))
    bf16 = "bf16" in resolve_precision(tcfg.precision)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = 0.0
    for step in range(tcfg.max_steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        for _ in range(accumulate):
            x, y = (t.to(device, non_blocking=True) for t in next(batches))
            with autocast:
                loss = loss_of(x, y) / accumulate
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def peak_flops(device: torch.device, bf16: bool) -> float:
    """Datasheet peak on GPUs (Lightning's table), a measured matmul peak on CPU."""
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = get_available_flops(device, dtype) if device.type != "cpu" else None
    return float(peak or measure_peak_flops(dtype))


def main(argv: list[str] | None = None) -> int:
    """Run the alternating rounds and print the table and the ratio."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=5, help="rounds per path (alternating)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each round")
    p.add_argument("--vocab", type=int, help="model vocabulary (default: the config's tokenizer size)")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps: a seconds-long smoke run")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 12, 3
        overrides = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64",
                     "pretrain.batch_size=8", "finetune.max_len=64", *overrides]  # fmt: skip
    cfg = load_config(args.config, overrides)
    vocab = args.vocab or (50257 if cfg.tokenizer.kind == "gpt2" else cfg.tokenizer.vocab_size + 4)
    gcfg = cfg.model.with_vocab(vocab)
    never = args.steps + 1  # no validation or checkpoint inside the timed window
    tcfg = replace(cfg.pretrain, max_steps=args.steps, val_every=never, ckpt_every=never, val_batches=1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accumulate = accumulation(tcfg, gcfg.block_size)
    tokens = (args.steps - args.warmup) * accumulate * tcfg.batch_size * gcfg.block_size
    with torch.device("meta"):
        flops_per_token = GPT(gcfg).flops_per_token()
    bf16 = "bf16" in resolve_precision(tcfg.precision)
    peak = peak_flops(device, bf16)
    print(
        f"device {device} | precision {resolve_precision(tcfg.precision)} | model {gcfg.n_layer}x{gcfg.n_embd} "
        f"ctx {gcfg.block_size} vocab {vocab} | batch {tcfg.batch_size} x accumulate {accumulate} | "
        f"{args.steps} steps ({args.warmup} untimed) x {args.rounds} rounds | peak {peak / 1e12:.2f} TFLOP/s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), n_docs=400 if args.quick else 4000)
        results: dict[str, list[float]] = {"lightning+mlflow": [], "bare": []}
        for r in range(args.rounds):
            order = ["lightning+mlflow", "bare"] if r % 2 == 0 else ["bare", "lightning+mlflow"]
            for name in order:
                run = lightning_round if name == "lightning+mlflow" else bare_round
                seconds = run(gcfg, tcfg, shards, args.warmup, device)
                tps = tokens / seconds
                results[name].append(tps)
                mfu = tps * flops_per_token / peak
                step_ms = 1000 * seconds / (args.steps - args.warmup)
                print(f"round {r + 1} {name:<17} {tps:>12,.0f} tokens/s  {step_ms:8.1f} ms/step  MFU {mfu:6.1%}")
    med = {name: statistics.median(v) for name, v in results.items()}
    for name, tps in med.items():
        step_ms = 1000 * tokens / tps / (args.steps - args.warmup)
        mfu = tps * flops_per_token / peak
        print(f"median {name:<17} {tps:>12,.0f} tokens/s  {step_ms:8.1f} ms/step  MFU {mfu:6.1%}")
    print(f"ratio lightning+mlflow / bare = {med['lightning+mlflow'] / med['bare']:.3f} (goal >= 0.97)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
