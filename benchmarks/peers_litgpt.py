"""litgpt's contender in benchmarks/peers.py: litgpt's own pretraining, its step ends written as JSON.

    /work/peers/litgpt-venv/bin/python benchmarks/peers_litgpt.py WORK_JSON RESULT_JSON [ROTARY]

Runs in litgpt's venv and uses only litgpt's API (no gptflow import): `litgpt.pretrain.setup`, the
function behind `litgpt pretrain`, with a `litgpt.Config` shaped like the work (LayerNorm, GELU
MLP, biases, sequential residual; RoPE on ROTARY of each head, as litgpt has no learned
positions), `TrainArgs(tie_embeddings=True)`, precision "32-true", one device, and a
`litgpt.data.DataModule` that serves random windows of block_size + 1 tokens from the same
`train.bin` (litgpt's `TextFiles` would re-tokenize through litdata's `optimize`). Optimizer steps
are clocked by peers.StepClock. Started by benchmarks/peers.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from litgpt.config import Config
from litgpt.data import DataModule
from peers import StepClock  # benchmarks/ is this script's directory
from torch.utils.data import DataLoader, IterableDataset


class Windows(IterableDataset):
    """Endless batches of `batch_size` random windows of `length` tokens from a uint16 token file."""

    def __init__(self, path: str, batch_size: int, length: int, seed: int):
        self.path, self.batch_size, self.length, self.seed = path, batch_size, length, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        tokens = np.memmap(self.path, dtype=np.uint16, mode="r")
        rng = np.random.default_rng(self.seed)
        while True:
            starts = rng.integers(0, len(tokens) - self.length, size=self.batch_size)
            yield torch.from_numpy(tokens[starts[:, None] + np.arange(self.length)].astype(np.int64))


class TokenWindows(DataModule):
    """Pre-tokenized shards for litgpt's pretrain loop, which slices inputs and targets from each window."""

    def __init__(self, shard_dir: str):
        super().__init__()
        self.shard_dir = Path(shard_dir)
        self.batch_size, self.length = 1, 2

    def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None, **kwargs) -> None:
        self.batch_size = batch_size
        self.length = (max_seq_length or 1) + 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Windows(str(self.shard_dir / "train.bin"), self.batch_size, self.length, 0), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Windows(str(self.shard_dir / "val.bin"), self.batch_size, self.length, 1), batch_size=None)


def main(work_file: str, result_file: str, rotary: str = "0.25") -> None:
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.pretrain import setup

    w = json.loads(Path(work_file).read_text())
    config = Config(
        name="gptflow-peer",
        block_size=w["block_size"],
        n_layer=w["n_layer"],
        n_head=w["n_head"],
        n_embd=w["n_embd"],
        vocab_size=w["vocab_size"],
        padded_vocab_size=w["padded_vocab_size"],
        bias=True,
        lm_head_bias=False,
        norm_class_name="LayerNorm",
        parallel_residual=False,
        mlp_class_name="GptNeoxMLP",
        intermediate_size=4 * w["n_embd"],
        gelu_approximate="none",
        rotary_percentage=float(rotary),
    )
    tokens_per_step = w["batch_size"] * w["block_size"]
    train = TrainArgs(
        save_interval=None,
        log_interval=1,
        global_batch_size=w["batch_size"],
        micro_batch_size=w["batch_size"],
        max_tokens=w["steps"] * tokens_per_step,
        lr_warmup_steps=w["warmup_steps"],
        max_norm=w["grad_clip"],
        min_lr=0.0,
        tie_embeddings=True,
    )
    optimizer = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": w["lr"], "weight_decay": w["weight_decay"], "betas": (0.9, 0.999), "eps": 1e-8},
    }
    sys.argv[1:] = [config.name]  # litgpt's final save_checkpoint re-parses sys.argv as `litgpt pretrain` arguments
    with tempfile.TemporaryDirectory(prefix="litgpt-peers-run-") as tmp:
        clock = StepClock().install()
        setup(
            model_name="gptflow-peer",
            model_config=config,
            out_dir=Path(tmp) / "out",
            precision="32-true",
            data=TokenWindows(w["shard_dir"]),
            train=train,
            eval=EvalArgs(interval=10**9, max_iters=1, initial_validation=False, final_validation=False),
            optimizer=optimizer,
            devices=1,
            logger_name="csv",
            seed=0,
        )
        clock.write(result_file, rotary=float(rotary))


if __name__ == "__main__":
    main(*sys.argv[1:])
