"""Speed and size figures of a trained detector, measured the same way for every trial.

- latency: batch 1, after ``warmup`` images, median and p95 over ``latency_images``
  forward passes (pre- and post-processing included, as a user would call it);
- throughput: images/s at batch ``throughput_batch`` over ``throughput_batches`` batches;
- params; FLOPs of one image's forward pass (``torch.utils.flop_counter``; a
  multiply-add counts as 2 FLOPs); peak resident memory of the process.

CPU figures depend on the threads the trial was given; they are reported with
the figures so comparisons stay fair.

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
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(dataset, n: int, device):
    return [dataset[i % len(dataset)][0].to(device) for i in range(n)]


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


@torch.no_grad()
def measure_speed(model: torch.nn.Module, dataset, device, *, enabled: bool = True,
                  latency_images: int = 50, warmup: int = 10, throughput_batch: int = 8,
                  throughput_batches: int = 5) -> Dict[str, float]:
    """Return ``latency_ms_p50``, ``latency_ms_p95``, ``throughput_img_s``, ``params``,
    ``gflops``, ``peak_rss_mb`` (and ``peak_gpu_mb`` on CUDA), ``threads``; ``{}`` when not
    ``enabled`` (the trial's ``eval.speed`` section is passed as keyword arguments)."""
    if not enabled:
        return {}
    model.eval()
    device = torch.device(device)
    with getattr(model, "uncached", contextlib.nullcontext)():
        for img in _images(dataset, warmup, device):
            model([img])
        times, stages = [], {}
        for img in _images(dataset, latency_images, device):
            _sync(device)
            t0 = time.perf_counter()
            model([img])
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000.0)
            recorded = getattr(model, "stage_times", {})
            for name, ms in recorded.items():
                stages.setdefault(name, []).append(ms)
            if recorded:  # everything after the proposals: what the Fast R-CNN paper times ("excludes proposals")
                stages.setdefault("detection", []).append(sum(ms for n, ms in recorded.items() if n != "proposals"))
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]

        batches = [_images(dataset, throughput_batch, device) for _ in range(throughput_batches)]
        _sync(device)
        t0 = time.perf_counter()
        for batch in batches:
            model(batch)
        _sync(device)
        throughput = throughput_batch * throughput_batches / (time.perf_counter() - t0)

    counter = FlopCounterMode(display=False)
    with counter:
        model(_images(dataset, 1, device))
    out = {
        "latency_ms_p50": statistics.median(times),
        "latency_ms_p95": p95,
        "throughput_img_s": throughput,
        "params": float(sum(p.numel() for p in model.parameters())),
        "gflops": counter.get_total_flops() / 1e9,
        "peak_rss_mb": peak_rss_mb(),
        "threads": float(torch.get_num_threads()),
        **{f"stage_{name}_ms": statistics.median(ms) for name, ms in stages.items()},
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
