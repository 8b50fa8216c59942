"""Multi-worker trials: one trial trained by N processes with DDP, under Ray Train.

A study's ``resources.workers_per_trial: N`` gives every trial dict ``workers: N``.
The Tune trainable then calls :func:`run_workers`, which runs a Ray Train
``TorchTrainer`` inside the Tune trial (Ray's "Train inside Tune": the trial's
own process only waits and forwards). Every Ray Train worker runs
:func:`train_worker`: the same ``run_trial`` as a one-process trial, with a
:class:`DDPRuntime` (gloo on CPU, NCCL on GPU, set up by Ray Train).

What "the same trial on N workers" means here:

- The global batch is ``train.batch_size``. Each epoch's global batches are
  exactly those a one-process run draws (the same per-epoch generator); worker
  ``r`` takes the ``r``-th contiguous part of each (:func:`shard`), so the N
  workers together see the same images in the same steps.
- Gradients are averaged over workers (DDP). A loss normalised by a count over
  the batch (positives) divides by the count averaged over workers
  (``detectors.train.runtime.worker_mean``), so the averaged gradient is the global
  batch's gradient, as in mmdetection's ``reduce_mean(num_pos)``.
- What still differs: batch-norm layers in training mode normalise with each
  worker's own statistics (``B/N`` images instead of ``B``) on CPU; on GPU they
  are converted to ``SyncBatchNorm``, which computes the global batch's. Sums run
  in another order (float rounding). tests/detectors/test_distributed.py
  states the resulting tolerances.
- The loop's logged losses are the mean over workers of each worker's loss
  (= the global batch's loss), image counts are summed; evaluation, speed
  measurement, checkpoints and reports happen on rank 0 only.

Rank 0 hands each report (metrics, checkpoint directory) to the Tune trial's
process through a Ray queue; that process calls ``tune.report`` with the
checkpoint, so a retried trial resumes from it like a one-process trial. The
checkpoint directory is under the trial's ``trial_dir`` (the runs directory,
storage every node sees); Tune copies it into its own storage.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import detectors.train.runtime as runtime_state
from detectors.config import TrialConfig


def global_batches(n: int, batch_size: int, generator: torch.Generator) -> List[List[int]]:
    """Dataset indices of the batches a one-process run (``LocalRuntime.train_loader``) draws
    from ``generator``: the same DataLoader machinery over ``range(n)``, so it consumes the
    generator the same way."""
    return list(DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=generator, collate_fn=list))


def shard(batch: List[int], rank: int, world_size: int) -> List[int]:
    """Worker ``rank``'s contiguous part of one global batch; part sizes differ by at most one.

    A batch with fewer images than workers (an epoch's last, short batch) is padded by
    repeating its images, one per worker, so that every worker takes the step: e.g. 3
    images over 2 workers -> [a, b] and [c]; 1 image over 2 workers -> [a] and [a].
    """
    if len(batch) < world_size:
        batch = [batch[i % len(batch)] for i in range(world_size)]
    q, r = divmod(len(batch), world_size)
    start = rank * q + min(rank, r)
    return batch[start:start + q + (1 if rank < r else 0)]


class _SyncedDDP(DistributedDataParallel):
    """DDP whose forward makes ``worker_mean`` average over the workers (see the module docstring)."""

    def __init__(self, module: nn.Module, mean: Callable[[float], float], **kwargs) -> None:
        super().__init__(module, **kwargs)
        self._mean = mean

    def forward(self, *args, **kwargs):
        runtime_state._worker_mean = self._mean
        try:
            return super().forward(*args, **kwargs)
        finally:
            runtime_state._worker_mean = None


class DDPRuntime:
    """One of ``world_size`` workers of a ``torch.distributed`` group (already initialised)."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def from_ray_train(cls) -> "DDPRuntime":
        """The runtime of this Ray Train worker (Ray Train set up the process group)."""
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _tensor(self, values: List[float]) -> torch.Tensor:
        # NCCL reduces only CUDA tensors, gloo CPU ones.
        where = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        return torch.tensor(values, dtype=torch.float64, device=where)

    def mean(self, value: float) -> float:
        t = self._tensor([value])
        dist.all_reduce(t)
        return t.item() / self.world_size

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.device.type == "cuda" and self.world_size > 1:
            # Batch statistics of the global batch (SyncBatchNorm runs on GPUs only).
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model.to(self.device)

    def wrap(self, objective: nn.Module) -> nn.Module:
        """DDP around one phase's objective (built after the phase froze what it freezes).
        ``find_unused_parameters``: a trainable part whose loss the phase does not count
        gets no gradient, and DDP must not wait for it."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return _SyncedDDP(objective, self.mean, device_ids=ids, find_unused_parameters=True)

    def train_loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator,
                     collate_fn: Callable) -> DataLoader:
        """This worker's shard of each of the epoch's global batches (see :func:`shard`)."""
        parts = [shard(b, self.rank, self.world_size) for b in global_batches(len(dataset), batch_size, generator)]
        return DataLoader(dataset, batch_sampler=parts, collate_fn=collate_fn)

    def sum_over_workers(self, values: Dict[str, float]) -> Dict[str, float]:
        keys = sorted(values)  # every worker sends the same names in the same order
        t = self._tensor([float(values[k]) for k in keys])
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))


# --------------------------------------------------------------------------- Ray Train

def train_worker(config: Dict) -> None:
    """Every Ray Train worker: ``run_trial`` with its DDP runtime; rank 0 queues the reports."""
    import ray

    from detectors.train.run import run_trial

    runtime = DDPRuntime.from_ray_train()
    queue, node = config["queue"], ray.get_runtime_context().get_node_id()

    def report(metrics: Dict[str, float], ckpt_dir: Optional[str]) -> None:
        queue.put((dict(metrics, node_id=node), ckpt_dir))

    run_trial(config["trial"], report if runtime.is_main else None, config["resume_from"], runtime)


class WorkerFailed(RuntimeError):
    """A multi-worker trial's training failed; the message names the worker and its error."""


def _failure_text(exc: BaseException) -> str:
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        return f"worker {rank} of the trial failed: {lines[-1] if lines else type(err).__name__}"
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_workers(trial: Dict, report: Callable[[Dict[str, float], Optional[str]], None],
                resume_from: Optional[str] = None) -> None:
    """Train ``trial`` on ``trial["workers"]`` Ray Train workers from inside a Tune trial.

    ``report(metrics, ckpt_dir)`` is called in this process for each of rank 0's reports,
    in order. Each worker asks ``cpus`` CPUs and ``gpus`` GPUs (the trial dict's), in one
    placement group packed onto as few nodes as possible; this process asks nothing more.
    Any worker failing ends the run (Ray Train does not retry it: Tune retries the whole
    trial from its last checkpoint, counting the attempt).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    cfg = TrialConfig.from_dict(trial)
    per_worker = {"CPU": float(cfg.cpus)}
    if cfg.gpus > 0:
        per_worker["GPU"] = float(cfg.gpus)
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"trial": trial, "resume_from": resume_from, "queue": queue},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus > 0,
                                     resources_per_worker=per_worker, placement_strategy="PACK"),
        run_config=RunConfig(name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                             storage_path=os.path.join(cfg.trial_dir, "train"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    outcome: Dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised below, in the trial's own thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="detbench-train-run", daemon=True)
    thread.start()
    while True:
        try:
            metrics, ckpt_dir = queue.get(timeout=1.0)
        except Empty:
            if thread.is_alive() or not queue.empty():
                continue
            break
        report(metrics, ckpt_dir)  # tune.report: from this (the trial's) thread
    if "error" in outcome:
        raise WorkerFailed(_failure_text(outcome["error"])) from outcome["error"]
