"""Deterministic, resumable data order and augmentation for the training loop.

Exact resume (the loss sequence of an interrupted-and-resumed run equals the uninterrupted one) needs two
things that torch's and basicsr's samplers do not give:
- ``ShardedEpochSampler``: per-epoch shuffled order (seeded by ``seed + epoch``), sharded over ranks, that can
  start part-way through an epoch;
- ``SeededSamples``: each sample's augmentation randomness (Python ``random``, NumPy, torch) is seeded from
  (seed, epoch, index), so crops and flips do not depend on which worker loads the sample or in what order.
  This works for any dataset that draws from the global RNGs, basicsr's included.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ShardedEpochSampler(Sampler[int]):
    """Virtual indices ``range(size * enlarge_ratio)``, shuffled per epoch, this rank's shard.

    Indices past ``size`` are repeats (BasicSR's ``dataset_enlarge_ratio``); ``SeededSamples`` maps them back
    modulo its dataset's length and still gives each repeat its own random augmentation.
    """

    def __init__(self, size: int, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 enlarge_ratio: int = 1) -> None:
        if size < 1:
            raise ValueError('cannot sample from an empty dataset')
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.shuffle, self.seed, self.enlarge_ratio = shuffle, seed, enlarge_ratio
        self.total = -(-size * enlarge_ratio // num_replicas) * num_replicas
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Next iteration yields epoch ``epoch``'s order, skipping this rank's first ``start`` samples."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        n = self.size * self.enlarge_ratio
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(n))
        order += order[:self.total - n]  # pad so every rank gets the same count
        return iter(order[self.rank:self.total:self.num_replicas][self.start:])

    def __len__(self) -> int:
        return self.total // self.num_replicas - self.start


class SeededSamples(Dataset):
    """Wraps a dataset so that virtual sample ``i`` of epoch ``e`` always draws the same random augmentation.

    The global RNG states are saved and restored around each sample, so wrapping does not disturb the
    caller's random streams when samples are loaded in the main process (``num_workers: 0``).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        sample_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        random.seed(int(sample_seed))
        np.random.seed(int(sample_seed))
        torch.manual_seed(int(sample_seed))
        try:
            return self.dataset[index % len(self.dataset)]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
