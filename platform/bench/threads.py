"""Benchmark command: dataset generation time, train img/s and eval latency per thread count.

    python -m platform.bench.threads [--threads 1 2] [--scale tiny] [--steps 30] [--train-epochs 0]

Prints one line per figure. Each thread count runs one short trial through the
training loop (``detectors.train.run.run_trial`` on a ``detectors.train.trial.make_trial``
dict, ``--steps`` optimiser steps), so the figures are the ones a study's trials
report: train img/s over the timed training (its first, allocating steps
included) and ``detectors.evaluation.speed``'s latency. Timings are wall clock on this
machine, so run it on an otherwise idle machine when comparing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import List, Optional

from detectors.data.synthetic import generate
from detectors.train.run import run_trial
from detectors.train.trial import make_trial

# A short, tuned-for-the-default-set training (the full run of --train-epochs).
TRAIN = {"lr": 2e-3, "warmup_iters": 50, "eval_every_epoch": False}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m platform.bench.threads", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scale", default="tiny", choices=["tiny", "paper"])
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per thread count")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-epochs", type=int, default=0,
                    help="also run a full training of this many epochs on the default set (1 thread) and print AP50")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        paths = generate(None, cache)
        print(f"dataset generation (default synthetic, 600+100 images): {time.perf_counter() - t0:.1f} s")

        def trial(name: str, threads: int, **train) -> dict:
            return make_trial(paths, f"{cache}/{name}", detector={"scale": args.scale}, study="bench",
                              variant=name, num_threads=threads,
                              train={**TRAIN, "batch_size": args.batch_size, **train})

        for n in args.threads:
            # as many epochs as steps: max_steps always ends the run first
            final = run_trial(trial(f"threads={n}", n, epochs=args.steps, max_steps=args.steps))
            print(f"{args.scale} threads={n}: train {final['speed/train_img_s']:.1f} img/s "
                  f"(batch {args.batch_size}), eval latency p50 {final['speed/latency_ms_p50']:.1f} ms, "
                  f"p95 {final['speed/latency_ms_p95']:.1f} ms (batch 1, 128 px)")
        if args.train_epochs:
            t0 = time.perf_counter()
            final = run_trial(trial("train", 1, epochs=args.train_epochs))
            print(f"{args.scale} training, {args.train_epochs} epochs x 600 images, 1 thread: "
                  f"AP50 {final['AP50']:.3f}, AP {final['AP']:.3f}, wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
