"""Speed and size figures of a trained detector, measured the same way for every trial.

- latency: batch 1, after ``warmup`` images, median and p95 over ``latency_images``
  forward passes (pre- and post-processing included, as a user would call it);
- throughput: images/s at batch ``throughput_batch`` over ``throughput_batches``
  batches, timed ``repeats`` times (median, and the spread max - min);
- params; FLOPs of one image's forward pass (``torch.utils.flop_counter``; a
  multiply-add counts as 2 FLOPs); peak resident memory of the process.

Timing on CUDA uses CUDA events recorded on the stream, read after a
synchronisation, so queued kernels count and host time does not; on CPU the
wall clock (``time.perf_counter``). CPU figures depend on the threads the
trial was given; they are reported with the figures so comparisons stay fair.

Where the figures are taken: a study measures latency, throughput and training
speed once per speed configuration, alone on a node (``detectors.evaluation.speed_phase``);
``measure_speed`` is the measurement itself, also usable on any model by hand.

Detectors with stages (the two-stage family) record ``model.stage_times`` (ms
per named stage of their last eval-mode call); the median over the latency
images is reported as ``stage_<name>_ms`` (``proposals``, ``features``,
``regions``), with ``stage_detection_ms``, the time of every stage after the
proposals. A detector whose inputs are cached (selective-search proposals)
is measured inside its ``uncached()`` context, so every timed call computes
everything a user's call would.
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from detectors.train.precision import autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(dataset, n: int, device):
    return [dataset[i % len(dataset)][0].to(device) for i in range(n)]


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def timed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes on ``device``: CUDA events on a GPU, the wall clock on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values`` (as the latency p95 always was)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def median_and_spread(values: List[float]) -> Dict[str, float]:
    """``median`` and ``spread`` (max - min) of repeated measurements of one figure."""
    return {"median": statistics.median(values), "spread": max(values) - min(values), "n": len(values)}


@torch.no_grad()
def size_figures(model: torch.nn.Module, dataset, device, precision: str = "fp32") -> Dict[str, float]:
    """``params``, ``gflops`` (one image), ``peak_rss_mb`` and ``threads``: what does not need a quiet machine."""
    device = torch.device(device)
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, autocast(device, precision):
        model(_images(dataset, 1, device))
    return {"params": float(sum(p.numel() for p in model.parameters())),
            "gflops": counter.get_total_flops() / 1e9, "peak_rss_mb": peak_rss_mb(),
            "threads": float(torch.get_num_threads())}


@torch.no_grad()
def measure_speed(model: torch.nn.Module, dataset, device, *, enabled: bool = True,
                  latency_images: int = 50, warmup: int = 10, throughput_batch: int = 8,
                  throughput_batches: int = 5, repeats: int = 1, precision: str = "fp32",
                  **_unused) -> Dict[str, float]:
    """Return ``latency_ms_p50``, ``latency_ms_p95``, ``throughput_img_s`` (the median of
    ``repeats``) and ``throughput_img_s_spread``, ``params``, ``gflops``, ``peak_rss_mb``
    (and ``peak_gpu_mb`` on CUDA), ``threads``; ``{}`` when not ``enabled`` (the trial's
    ``eval.speed`` section is passed as keyword arguments; keys meant for the speed
    phase, such as ``train_steps``, are ignored here)."""
    if not enabled:
        return {}
    model.eval()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # a detector whose inputs are cached (selective-search proposals) is timed without its cache
    with getattr(model, "uncached", contextlib.nullcontext)(), autocast(device, precision):
        for img in _images(dataset, warmup, device):
            model([img])
        times, stages = [], {}
        for img in _images(dataset, latency_images, device):
            times.append(timed_ms(lambda img=img: model([img]), device))
            recorded = getattr(model, "stage_times", {})
            for name, ms in recorded.items():
                stages.setdefault(name, []).append(ms)
            if recorded:  # everything after the proposals: what the Fast R-CNN paper times ("excludes proposals")
                stages.setdefault("detection", []).append(sum(ms for n, ms in recorded.items() if n != "proposals"))
        batches = [_images(dataset, throughput_batch, device) for _ in range(throughput_batches)]
        rates = []
        for _ in range(max(1, repeats)):
            ms = timed_ms(lambda: [model(batch) for batch in batches], device)
            rates.append(throughput_batch * throughput_batches / (ms / 1000.0))
    tput = median_and_spread(rates)
    out = {"latency_ms_p50": statistics.median(times), "latency_ms_p95": percentile(times, 0.95),
           "throughput_img_s": tput["median"], "throughput_img_s_spread": tput["spread"],
           **size_figures(model, dataset, device, precision),
           **{f"stage_{name}_ms": statistics.median(ms) for name, ms in stages.items()}}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
