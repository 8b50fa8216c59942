"""Where a trial's training runs: the seam for one process or several workers.

The training loop asks its runtime for the device, to prepare the model and
to make each epoch's loader, and whether this process reports and writes
files (rank 0). ``LocalRuntime`` is one process: the model and loader as they
are. A multi-worker runtime (Ray Train, DDP) implements the same four things:
it wraps the model for gradient averaging and gives each worker its shard of
every epoch's batches.

The data path: ``loader_workers`` DataLoader processes (0: batches are made in
the training process; ``platform.bench`` measures both, and with decoded images
cached in memory a one-CPU trial is faster without workers), pinned host memory
and non-blocking copies when the device is CUDA.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset


class LocalRuntime:
    """One process, one device; rank 0 of a world of 1."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device, loader_workers: int = 0) -> None:
        self.device = torch.device(device)
        self.loader_workers = int(loader_workers)

    @classmethod
    def for_trial(cls, trial: dict) -> "LocalRuntime":
        """CUDA when the trial was given a GPU and one is visible, else CPU."""
        wants_gpu = trial.get("gpus", 0) > 0
        return cls(torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu"),
                   loader_workers=int(trial.get("loader_workers", 0)))

    @property
    def non_blocking(self) -> bool:
        """Host-to-device copies overlap with compute only from pinned memory to CUDA."""
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def train_loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator,
                     collate_fn: Callable) -> DataLoader:
        """The epoch's shuffled batches; the order depends only on ``generator``'s seed."""
        if self.loader_workers and hasattr(dataset, "preload"):
            dataset.preload()  # forked workers then share the decoded images
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn,
                          num_workers=self.loader_workers, pin_memory=self.device.type == "cuda")
