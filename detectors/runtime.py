"""Where a trial's training runs: the seam for one process or several workers.

The training loop asks its runtime for the device, to prepare the model and
to make each epoch's loader, and whether this process reports and writes
files (rank 0). ``LocalRuntime`` is one process: the model and loader as they
are. A multi-worker runtime (Ray Train, DDP) implements the same four things:
it wraps the model for gradient averaging and gives each worker its shard of
every epoch's batches.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset


class LocalRuntime:
    """One process, one device; rank 0 of a world of 1."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @classmethod
    def for_trial(cls, trial: dict) -> "LocalRuntime":
        """CUDA when the trial was given a GPU and one is visible, else CPU."""
        wants_gpu = trial.get("gpus", 0) > 0
        return cls(torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def train_loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator,
                     collate_fn: Callable) -> DataLoader:
        """The epoch's shuffled batches; the order depends only on ``generator``'s seed."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn)
