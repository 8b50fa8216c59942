"""Where a trial's training runs: the seam for one process or several workers.

The training loop asks its runtime for the device, to prepare the model, to
wrap each phase's objective for training, to make each epoch's loader, to sum
the epoch's figures over workers, and whether this process reports and writes
files (rank 0). ``LocalRuntime`` is one process: everything as it is.
``detectors.train.distributed.DDPRuntime`` is one of several workers (Ray Train,
DDP): it averages gradients, gives each worker its shard of every global batch
and all-reduces what the loop logs.

The data path: ``loader_workers`` DataLoader processes (0: batches are made in
the training process; ``platform.bench`` measures both, and with decoded images
cached in memory a one-CPU trial is faster without workers), pinned host memory
and non-blocking copies when the device is CUDA.

Losses normalised by a count over the batch (RetinaNet's positive anchors)
ask :func:`worker_mean` for that count: inside a multi-worker training step it
is the mean over the workers, so that the gradient averaged over workers is the
gradient of the whole global batch (see ``detectors.train.distributed``); everywhere
else it is the count itself.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from detectors.config import TrialConfig

# Set by a multi-worker runtime for the duration of one synchronised training forward:
# a function averaging a float over the workers (a collective: every worker calls it).
_worker_mean: Optional[Callable[[float], float]] = None


def worker_mean(value: float) -> float:
    """``value`` averaged over the workers of the current training step (itself outside one).

    Models call this for a loss normaliser (a number of positives, a sum of weights):
    with ``W`` workers each normalising its shard's loss sum ``S_w`` by the mean count
    ``N / W``, the mean over workers of ``S_w / (N / W)`` is ``S / N``, the global batch's loss.
    """
    return float(value) if _worker_mean is None else _worker_mean(float(value))


class LocalRuntime:
    """One process, one device; rank 0 of a world of 1."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device, loader_workers: int = 0) -> None:
        self.device = torch.device(device)
        self.loader_workers = int(loader_workers)

    @classmethod
    def for_trial(cls, cfg: TrialConfig) -> "LocalRuntime":
        """CUDA when the trial was given a GPU and one is visible, else CPU."""
        wants_gpu = cfg.device_type == "cuda"
        return cls(torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu"),
                   loader_workers=cfg.loader_workers)

    @property
    def non_blocking(self) -> bool:
        """Host-to-device copies overlap with compute only from pinned memory to CUDA."""
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def wrap(self, objective: torch.nn.Module) -> torch.nn.Module:
        """What the loop calls for a training step (one process: the objective itself)."""
        return objective

    def train_loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator,
                     collate_fn: Callable) -> DataLoader:
        """The epoch's shuffled batches; the order depends only on ``generator``'s seed."""
        if self.loader_workers and hasattr(dataset, "preload"):
            dataset.preload()  # forked workers then share the decoded images
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn,
                          num_workers=self.loader_workers, pin_memory=self.device.type == "cuda")

    def sum_over_workers(self, values: Dict[str, float]) -> Dict[str, float]:
        """Per-name sums over the workers (one worker: the values)."""
        return dict(values)
