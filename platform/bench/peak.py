"""How far from the hardware each detector trains: achieved training GFLOP/s against a dense matmul's.

The peak is this machine's dense fp32 ``torch.mm`` on one thread
(``platform.bench.measurements.matmul_peak``): about the most floating-point work per second
its BLAS gets out of one core. A detector's training step does, per image, about 3 times
the FLOPs of its forward pass (the forward; the backward's gradient with respect to the
inputs, the same work again; and with respect to the weights, once more); the bench counts
both and the counted ratio is near 3 for every registered detector (2.94 to 2.97 at tiny
scale), so the usual estimate stands:

    achieved GFLOP/s = forward GFLOPs per training image x 3 x training img/s
    fraction of peak = achieved GFLOP/s / peak GFLOP/s (same threads)

A fraction over 1 is not work done faster than the peak: either the FLOPs counted exceed
the work done (the x 3 overstates a backward that skips frozen weights, or a convolution
runs an algorithm, such as Winograd's, with fewer multiplications than its formula
counts), or the peak is underestimated (the matmul was timed while the machine was
busier than during training). :func:`over_peak_note` says so. (A FLOP count that misses
work, an op ``torch.utils.flop_counter`` has no formula for, errs the other way: the
fraction is then understated.)
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

# A training step's FLOPs per forward FLOP: forward, backward to the inputs, backward to the weights.
TRAINING_PASSES = 3


def training_gflop_s(forward_gflops_per_img: float, img_s: float, passes: float = TRAINING_PASSES) -> float:
    """Achieved training GFLOP/s: ``forward_gflops_per_img * passes * img_s``."""
    return forward_gflops_per_img * passes * img_s


def peak_gflop_s(flop: float, seconds: List[float]) -> Dict[str, float]:
    """GFLOP/s of a matmul of ``flop`` FLOPs from its timed runs: ``median`` (from the median time, what
    the fractions use) and ``best`` (from the fastest run)."""
    return {"median": flop / statistics.median(seconds) / 1e9, "best": flop / min(seconds) / 1e9}


def fraction_rows(zoo: List[Dict[str, Any]], peak: float) -> List[Dict[str, Any]]:
    """One row per zoo row that has training figures: its forward GFLOPs per training image, the counted
    (forward + backward) / forward ratio, train img/s (and its spread, max - min), achieved GFLOP/s and that
    as a fraction of ``peak`` (GFLOP/s on as many threads as the zoo used)."""
    rows = []
    for z in zoo:
        if "train_img_s" not in z:
            continue
        achieved = training_gflop_s(z["train_gflops"], z["train_img_s"])
        rows.append({"detector": z["detector"], "train_gflops": z["train_gflops"],
                     "counted_passes": z["train_gflops_fwd_bwd"] / z["train_gflops"],
                     "train_img_s": z["train_img_s"], "train_img_s_spread": z.get("train_img_s_spread", 0.0),
                     "achieved_gflop_s": achieved,
                     "fraction_of_peak": achieved / peak})
    return rows


def over_peak_note(rows: List[Dict[str, Any]]) -> Optional[str]:
    """None when every fraction is at most 1; else the sentence saying what a fraction over 1 means."""
    over = [r["detector"] for r in rows if r["fraction_of_peak"] > 1.0]
    if not over:
        return None
    return (f"{', '.join(over)} above 1, not work done faster than the peak: either the FLOPs counted exceed "
            f"the work done (x 3 overstates a backward that skips frozen weights, or a convolution algorithm "
            f"needs fewer multiplications than counted) or the peak is underestimated (the matmul ran while the "
            f"machine was busier than during training).")
