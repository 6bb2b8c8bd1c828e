"""Data errors met during training, carried to the training loop as one line instead of a traceback.

A dataset raising inside a DataLoader worker reaches the main process as the worker's whole traceback folded into
the exception message; and a process that raises mid-iteration leaves no state to resume from. So the loader's
dataset is wrapped: a sample that cannot be read becomes a :class:`DataFault` (the dataset, the sample and the
dataset's own message, which names the key or file and what was expected), the batch holding it becomes that
fault, and the loop saves a resumable state and stops with the line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset, default_collate


@dataclass(frozen=True)
class DataFault:
    """A sample that could not be read: ``message`` is the one line to show."""

    message: str


def describe_error(err: BaseException) -> str:
    """An exception as one line: its message (a KeyError's without the quotes repr adds) and its type."""
    text = str(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    return ' '.join(f'{text} ({type(err).__name__})'.split())


class GuardedSamples(Dataset):
    """``dataset[index]``, or a DataFault naming ``where`` (e.g. ``datasets.train (REDSClipDataset)``) and the
    sample when reading it raises."""

    def __init__(self, dataset: Any, where: str) -> None:
        self.dataset, self.where = dataset, where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as err:  # any reading/decoding error of any dataset: reported, not raised in a worker
            return DataFault(f'{self.where}, sample {index}: {describe_error(err)}')


def collate_or_fault(samples: list[Any]) -> Any:
    """``default_collate``, or the first DataFault among ``samples``."""
    for sample in samples:
        if isinstance(sample, DataFault):
            return sample
    return default_collate(samples)
