"""Language-model batches from memory-mapped token shards.

Training windows are drawn at random, but as a pure function of (seed, micro-batch index): a run
resumed at optimizer step k sees exactly the batches an uninterrupted run sees from step k on, with
no sampler state. The loaders get their own torch.Generator so that creating an iterator never
draws from the global RNG (which drives dropout and is saved in checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from gpt.shards import open_shard


def _windows(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = offsets[:, None] + np.arange(block_size + 1)[None, :]
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


class RandomWindows(IterableDataset):
    """Endless batches of random (input, target) windows; micro-batch `s` depends only on (seed, s)."""

    def __init__(self, shard_dir: Path, block_size: int, batch_size: int, seed: int, start_step: Callable[[], int]):
        self.shard_dir, self.block_size, self.batch_size, self.seed = shard_dir, block_size, batch_size, seed
        self.start_step = start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tokens = open_shard(self.shard_dir, "train")
        high = len(tokens) - self.block_size - 1
        if high <= 0:
            raise ValueError(f"train split has {len(tokens)} tokens, fewer than block_size + 1")
        step = self.start_step()
        while True:
            offsets = np.random.default_rng([self.seed, step]).integers(0, high, size=self.batch_size)
            yield _windows(tokens, offsets, self.block_size)
            step += 1


class FixedWindows(torch.utils.data.Dataset):
    """Evenly spaced validation windows, the same every time."""

    def __init__(self, shard_dir: Path, block_size: int, batch_size: int, n_batches: int):
        self.tokens = open_shard(shard_dir, "val")
        self.block_size, self.batch_size = block_size, batch_size
        high = len(self.tokens) - block_size - 1
        if high <= 0:
            raise ValueError(f"val split has {len(self.tokens)} tokens, fewer than block_size + 1")
        n = max(1, min(n_batches * batch_size, high // block_size + 1))
        self.offsets = np.linspace(0, high, num=n, dtype=np.int64)

    def __len__(self) -> int:
        return (len(self.offsets) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, self.offsets[i * self.batch_size : (i + 1) * self.batch_size], self.block_size)


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders over an `encode` stage directory; batches are built whole, so batch_size=None."""

    def __init__(
        self, shard_dir: Path, block_size: int, batch_size: int, val_batches: int, seed: int, accumulate: int = 1
    ):
        super().__init__()
        self.shard_dir, self.block_size, self.batch_size = Path(shard_dir), block_size, batch_size
        self.val_batches, self.seed, self.accumulate = val_batches, seed, accumulate

    def _first_micro_batch(self) -> int:
        """Index of the next micro-batch: optimizer steps done times micro-batches per step."""
        return self.trainer.global_step * self.accumulate if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        ds = RandomWindows(self.shard_dir, self.block_size, self.batch_size, self.seed, self._first_micro_batch)
        return DataLoader(ds, batch_size=None, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        ds = FixedWindows(self.shard_dir, self.block_size, self.batch_size, self.val_batches)
        return DataLoader(ds, batch_size=None, generator=torch.Generator())
