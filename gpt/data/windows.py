"""Language-model batches from memory-mapped token shards.

Training windows are drawn at random, but as a pure function of (seed, optimizer step): step k's
global batch is `global_batch` windows drawn from rng(seed, k), and each (micro-batch, rank) takes
its own slice of it. So a run resumed at step k sees exactly the batches an uninterrupted run sees
from step k on, with no sampler state, and the windows of a step do not depend on how they are split
between devices and accumulation (2 DDP ranks x 8 windows = 1 process x 16 = 1 process x 8 x 2
accumulated), which is what lets a checkpoint resume on a different device count.

The loaders get their own torch.Generator so that creating an iterator never
draws from the global RNG (which drives dropout and is saved in checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from gpt.data.shards import check_split_length, open_shard


def _windows(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = offsets[:, None] + np.arange(block_size + 1)[None, :]
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


class RandomWindows(IterableDataset):
    """Endless batches of random (input, target) windows: this rank's slices of each step's global batch.

    Micro-batch `m` of rank `r` (of `world` ranks, `accumulate` micro-batches per step) is slice
    `(m % accumulate) * world + r` of step `m // accumulate`'s global batch, so it depends only on
    (seed, step, slice).
    """

    def __init__(
        self,
        shard_dir: Path,
        block_size: int,
        batch_size: int,
        seed: int,
        start_micro_batch: Callable[[], int],
        accumulate: int = 1,
        rank: int = 0,
        world: int = 1,
    ):
        self.shard_dir, self.block_size, self.batch_size, self.seed = shard_dir, block_size, batch_size, seed
        self.start_micro_batch, self.accumulate, self.rank, self.world = start_micro_batch, accumulate, rank, world

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tokens = open_shard(self.shard_dir, "train")
        check_split_length("train", len(tokens), self.block_size)
        high = len(tokens) - self.block_size - 1
        global_batch = self.batch_size * self.accumulate * self.world
        micro = self.start_micro_batch()
        while True:
            step, within = divmod(micro, self.accumulate)
            first = (within * self.world + self.rank) * self.batch_size
            offsets = np.random.default_rng([self.seed, step]).integers(0, high, size=global_batch)
            yield _windows(tokens, offsets[first : first + self.batch_size], self.block_size)
            micro += 1


class FixedWindows(torch.utils.data.Dataset):
    """Evenly spaced validation windows, the same every time."""

    def __init__(self, shard_dir: Path, block_size: int, batch_size: int, n_batches: int):
        self.tokens = open_shard(shard_dir, "val")
        self.block_size, self.batch_size = block_size, batch_size
        check_split_length("val", len(self.tokens), block_size)
        high = len(self.tokens) - block_size - 1
        n = max(1, min(n_batches * batch_size, high // block_size + 1))
        self.offsets = np.linspace(0, high, num=n, dtype=np.int64)

    def __len__(self) -> int:
        return (len(self.offsets) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, self.offsets[i * self.batch_size : (i + 1) * self.batch_size], self.block_size)


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders over an `encode` stage directory; batches are built whole, so batch_size=None.

    Rank, world size and gradient accumulation are read from the trainer, so one module serves any
    device count.
    """

    def __init__(self, shard_dir: Path, block_size: int, batch_size: int, val_batches: int, seed: int):
        super().__init__()
        self.shard_dir, self.block_size, self.batch_size = Path(shard_dir), block_size, batch_size
        self.val_batches, self.seed = val_batches, seed

    def _accumulate(self) -> int:
        return self.trainer.accumulate_grad_batches if self.trainer is not None else 1

    def _first_micro_batch(self) -> int:
        """Index of this rank's next micro-batch: optimizer steps done times micro-batches per step."""
        return self.trainer.global_step * self._accumulate() if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        ds = RandomWindows(
            self.shard_dir,
            self.block_size,
            self.batch_size,
            self.seed,
            self._first_micro_batch,
            self._accumulate(),
            rank,
            world,
        )
        return DataLoader(ds, batch_size=None, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        ds = FixedWindows(self.shard_dir, self.block_size, self.batch_size, self.val_batches)
        return DataLoader(ds, batch_size=None, generator=torch.Generator())
