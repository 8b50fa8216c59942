"""``python -m platform.bench``: side-by-side measurements of detbench's speed, repeated, with median and spread.

    python -m platform.bench --quick            # about 5-10 minutes on 2 cores
    python -m platform.bench                    # longer trials, more repeats
    python -m platform.bench --only retinanet evaluation

Every figure is measured beside its reference in the same run (interleaved where
it can be), repeated, and reported as median and spread (max - min), so a ratio
holds even on a machine others are using; the machine (CPU, cores, GPU, torch,
the load average before and after) is written with the figures. Output:
``<out>/bench.json`` (everything, raw repeats included) and ``<out>/bench.md``
(the tables), default ``runs/bench/``.

sections (targets from issue 11):
  retinanet      training img/s of our RetinaNet / torchvision's on the same backbone, anchors, head, image
                 size, batch and 1 thread (target >= 1.0; from CPU time, see platform.bench.measurements), and the
                 step's parts: assignment, loss forward + backward, post-processing
  orchestration  the same trials through `platform.run` (Ray Tune, MLflow, store, speed phase, report)
                 against a plain loop calling detectors.train.run.run_trial, with 1 and with more trials: the
                 overhead per study and per trial, and the wall-time ratio they give for minute-long trials
                 (target <= 1.05 for trials of a minute or more)
  concurrency    4 one-CPU trials one at a time against two at a time (plain processes): speedup (target >= 1.8)
  evaluation     pycocotools against faster-coco-eval on 500 and 5000 images of detections (same numbers?
                 how much faster?), and the image bootstrap's resample: COCOeval's accumulate against ours
  zoo            every registered detector at tiny scale: params, FLOPs, latency, throughput, training img/s and
                 FLOPs per training image (1 thread)
  peak           the physical limit beside every training speed: this machine's dense fp32 matmul GFLOP/s on one
                 thread (torch.mm, n = 2048) and each zoo detector's achieved training GFLOP/s (forward GFLOPs per
                 training image x 3 x training img/s) as a fraction of it (platform.bench.peak); reuses the zoo's
                 figures, and runs the zoo first when it is not among the sections
  memory         a Ray worker's resident memory as it loads what a trial needs, and after a tiny trial
                 (target <= 1.5 GB)
  padding        paper-scale RetinaNet and Faster R-CNN (FPN) on one 800 x 1333 image padded to 32 against the
                 multiple they padded to before (128, 64; issue 22): padded size, anchors, GFLOPs, latency (1 thread)
  data           on the headline study's set (800 training images): an epoch of batches with / without the
                 decoded-image cache and with 0 / 2 DataLoader workers; training steps with 0 / 2 workers

--scale (alone): 10, 100 and 1000 stand-in trials through the real driver on SQLite and on PostgreSQL + an
MLflow server: overhead per trial, write rates, report, pages, cached re-run, peak RSS (platform.bench.scale).

--dataset-check (alone, no sections, nothing written): the driver's COCO annotation check on a generated file of
train2017's size (118k images, 860k boxes), first and cached (targets 20 s and 1 s; platform.bench.dataset_check).

the measurements themselves are platform.bench.measurements; python -m platform.bench.threads times one
short trial per thread count (train img/s, latency). Benchmarks live here, not in detectors/, whose every
file is hashed into each trial's config hash.
"""
from __future__ import annotations

import argparse
import logging
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from platform.bench.tables import markdown

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTIONS = ("retinanet", "orchestration", "concurrency", "evaluation", "zoo", "peak", "memory", "data", "padding")

# quick / full sizes of everything that costs time
SIZES = {
    "quick": dict(rounds=12, steps=8, profile_repeats=10, trials=2, train_images=200, epochs=2, conc_trials=4,
                  conc_train_images=160, conc_epochs=2, eval_images=(500, 5000), eval_repeats=(3, 1), zoo_images=10,
                  zoo_train_steps=5, peak_n=2048, peak_repeats=5, data_steps=10, padding_repeats=3,
                  bootstrap_resamples=20,
                  data_set={"num_train": 800, "num_val": 150}),
    "full": dict(rounds=20, steps=5, profile_repeats=30, trials=3, train_images=800, epochs=6, conc_trials=4,
                 conc_train_images=400, conc_epochs=3, eval_images=(500, 5000), eval_repeats=(5, 3), zoo_images=30,
                 zoo_train_steps=10, peak_n=2048, peak_repeats=9, data_steps=30, padding_repeats=5,
                 bootstrap_resamples=50,
                 data_set={"num_train": 800, "num_val": 150}),
    # --smoke: that the command runs (the tests); its numbers mean nothing
    "smoke": dict(rounds=2, steps=1, profile_repeats=2, trials=1, train_images=16, epochs=1, conc_trials=2,
                  conc_train_images=16, conc_epochs=1, eval_images=(20, 40), eval_repeats=(1, 1), zoo_images=2,
                  zoo_train_steps=1, peak_n=256, peak_repeats=2, data_steps=2, padding_repeats=1,
                  bootstrap_resamples=2, data_set={"num_train": 16, "num_val": 8}),
}


def median_spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "spread": max(values) - min(values), "n": len(values)}


def _run(cmd: List[str], cwd: str = REPO_ROOT, env: Optional[dict] = None) -> float:
    """Wall seconds of a subprocess that must succeed."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return time.perf_counter() - t0


# ------------------------------------------------------------------ sections

def bench_retinanet(paths: dict, size: dict) -> Dict[str, Any]:
    from platform.bench.measurements import ours_vs_torchvision, step_profile

    raw = ours_vs_torchvision(paths, steps=size["steps"], repeats=size["rounds"])
    out: Dict[str, Any] = {"raw": raw}
    for clock in ("cpu", "wall"):
        ratios = [a / b for a, b in zip(raw[f"ours_{clock}"], raw[f"torchvision_{clock}"])]
        out[clock] = {"ours_img_s": median_spread(raw[f"ours_{clock}"]),
                      "torchvision_img_s": median_spread(raw[f"torchvision_{clock}"]), "ratio": median_spread(ratios)}
    prof = step_profile(paths, repeats=size["profile_repeats"])
    out["profile_ms"] = {k: median_spread(v) for k, v in prof.items()}
    return out


def _study_file(root: str, name: str, train_images: int, epochs: int, seeds: List[int], cache: str) -> str:
    import yaml

    study = {"name": name, "dataset": {"kind": "synthetic", "synthetic": {"num_train": train_images, "num_val": 50},
                                       "cache_dir": cache},
             "detector": {"name": "retinanet", "scale": "tiny"}, "loss": {"name": "focal"},
             "train": {"epochs": epochs, "batch_size": 8, "lr": 2.0e-3, "warmup_iters": 20},
             "eval": {"speed": {"latency_images": 20, "warmup": 5, "repeats": 3}},
             "sweep": {"seeds": seeds}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
             "output": {"runs_dir": os.path.join(root, "runs"), "reports_dir": os.path.join(root, "reports")}}
    path = os.path.join(root, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(study, f)
    return path


def _trial_files(study_path: str, root: str, speed_phase: bool = False) -> List[str]:
    """The study's trials as JSON files for ``python -m detectors.train`` / the plain loop."""
    from platform.study.expand import expand
    from platform.runner.orchestrate import prepare_dataset
    from platform.study.load import load_study

    trials = prepare_dataset(expand(load_study(study_path)))
    files = []
    for i, t in enumerate(trials):
        t = dict(t, trial_dir=os.path.join(root, "plain", f"t{i}"), speed_phase=speed_phase)
        path = os.path.join(root, f"trial{i}.json")
        with open(path, "w") as f:
            json.dump(t, f)
        files.append(path)
    return files


PLAIN_LOOP = """
import json, sys
from detectors.train.run import run_trial
for path in sys.argv[1:]:
    with open(path) as f:
        run_trial(json.load(f))
"""


def bench_orchestration(size: dict, cache: str) -> Dict[str, Any]:
    """The same trials through ``platform.run`` and through a plain loop over ``run_trial``, with 1 and with
    ``trials + 1`` trials, so the overhead splits into a fixed part (Ray start, MLflow's parent run, the speed
    phase, the report, shutdown) and a part per trial (a fresh Tune worker, its imports, its MLflow run)."""
    counts = (1, size["trials"] + 1)
    runs: Dict[int, Dict[str, float]] = {}
    cached = float("nan")
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="detbench-orch-") as root:
            study = _study_file(root, "bench_orchestration", size["train_images"], size["epochs"], list(range(n)),
                                cache)
            # The plain loop measures each trial's speed itself, as trials did before the speed phase.
            files = _trial_files(study, root)
            plain = _run([sys.executable, "-c", PLAIN_LOOP, *files])
            platform = _run([sys.executable, "-m", "platform.run", study, "--max-concurrent", "1"],
                            env={"PYTHONUNBUFFERED": "1"})
            if n == counts[-1]:
                cached = _run([sys.executable, "-m", "platform.run", study])
        runs[n] = {"plain_loop_s": plain, "platform_run_s": platform, "overhead_s": platform - plain}
    return dict(split_overhead(runs), cached_rerun_s=cached)


def split_overhead(runs: Dict[int, Dict[str, float]]) -> Dict[str, Any]:
    """Overheads of two trial counts -> the fixed and per-trial parts, and the ratio they give for trials of
    60 and 100 s (the headline study's) run one at a time."""
    few, many = sorted(runs)
    per_trial = max(0.0, (runs[many]["overhead_s"] - runs[few]["overhead_s"]) / (many - few))
    fixed = runs[few]["overhead_s"] - few * per_trial
    projected = {f"{secs} s x {n}": 1.0 + (fixed + n * per_trial) / (n * secs)
                 for secs in (60, 100) for n in (1, 5, 10, 15)}
    return {"trials": many, "runs": {str(n): runs[n] for n in sorted(runs)},
            "plain_loop_s": runs[many]["plain_loop_s"], "platform_run_s": runs[many]["platform_run_s"],
            "ratio": runs[many]["platform_run_s"] / runs[many]["plain_loop_s"],
            "overhead_s": runs[many]["overhead_s"], "per_trial_s": runs[many]["plain_loop_s"] / many,
            "fixed_overhead_s": fixed, "overhead_per_trial_s": per_trial, "projected_ratio": projected}


def bench_concurrency(size: dict, cache: str) -> Dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    seeds = list(range(size["conc_trials"]))
    with tempfile.TemporaryDirectory(prefix="detbench-conc-") as root:
        study = _study_file(root, "bench_concurrency", size["conc_train_images"], size["conc_epochs"], seeds, cache)
        files = _trial_files(study, root, speed_phase=True)  # the trials of a study leave timing to the phase

        def one(path: str) -> float:
            return _run([sys.executable, "-m", "detectors.train", path], env={"OMP_NUM_THREADS": "1"})

        t0 = time.perf_counter()
        sequential = [one(p) for p in files]
        seq_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            parallel = list(pool.map(one, files))
        par_wall = time.perf_counter() - t0
    return {"trials": len(files), "one_at_a_time_s": seq_wall, "two_at_a_time_s": par_wall,
            "speedup": seq_wall / par_wall, "trial_s_alone": median_spread(sequential),
            "trial_s_two_at_a_time": median_spread(parallel)}


def bench_evaluation(size: dict) -> Dict[str, Any]:
    from platform.bench.measurements import eval_backends

    out: Dict[str, Any] = {}
    for n, repeats in zip(size["eval_images"], size["eval_repeats"]):
        r = eval_backends(n, repeats)
        r["pycocotools_s"], r["faster_s"] = median_spread(r["pycocotools_s"]), median_spread(r["faster_s"])
        r["speedup"] = r["pycocotools_s"]["median"] / r["faster_s"]["median"]
        out[f"{n}_images"] = r
    out["bootstrap"] = bench_bootstrap(size["bootstrap_resamples"])
    return out


def bench_bootstrap(resamples: int, images: int = 150) -> Dict[str, Any]:
    """One detection set on ``images`` images: ms per resample with COCOeval's accumulate and with ours."""
    import numpy as np

    from dashboards import stats
    from detectors.evaluation.cocotools import coco_ground_truth
    from platform.bench.measurements import measured, synthetic_detections

    gt, dets = synthetic_detections(images, seed=1)
    coco = coco_ground_truth(gt)
    ids = sorted(coco.getImgIds())
    ev = stats._evaluated(coco, dets, ids)
    records = stats.ImageRecords(ev)
    rng = np.random.default_rng(0)
    old, new, same = [], [], True
    for _ in range(resamples):
        idx = rng.integers(0, len(ids), len(ids))
        a, ta = measured(stats._accumulate_on, ev, idx)
        b, tb = measured(records.ap, idx)
        old.append(ta["cpu"] * 1000)
        new.append(tb["cpu"] * 1000)
        same = same and a == b
    return {"images": images, "cocoeval_accumulate_ms": median_spread(old), "numpy_ms": median_spread(new),
            "speedup": statistics.median(old) / statistics.median(new), "identical_ap": same}


def bench_zoo(paths: dict, size: dict) -> List[Dict[str, Any]]:
    from platform.bench.measurements import detector_zoo

    return detector_zoo(paths, latency_images=size["zoo_images"], warmup=3, repeats=3,
                        train_steps=size["zoo_train_steps"])


def bench_peak(size: dict, zoo: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The single-thread matmul peak (after the zoo, so both are timed on the machine as it is then) and each
    zoo detector's achieved training GFLOP/s as a fraction of it."""
    from platform.bench.measurements import matmul_peak
    from platform.bench.peak import fraction_rows, over_peak_note, peak_gflop_s

    threads = {z["threads"] for z in zoo}
    if threads != {1}:
        raise ValueError(f"the peak is per thread; the zoo ran on {sorted(threads)} threads")
    mm = matmul_peak(n=size["peak_n"], repeats=size["peak_repeats"], threads=1)
    gflop_s = peak_gflop_s(mm["flop"], mm["wall_s"])
    rows = fraction_rows(zoo, gflop_s["median"])
    return {"matmul": dict(mm, gflop_s=gflop_s, cpu_gflop_s=peak_gflop_s(mm["flop"], mm["cpu_s"])),
            "detectors": rows, "note": over_peak_note(rows)}


def bench_padding(size: dict) -> List[Dict[str, Any]]:
    from platform.bench.measurements import padding_cost

    rows = padding_cost(repeats=size["padding_repeats"])
    for r in rows:
        r["wall_ms"], r["cpu_ms"] = median_spread(r["wall_ms"]), median_spread(r["cpu_ms"])
    return rows


def bench_memory(paths: dict) -> Dict[str, Any]:
    import ray
    import ray.cloudpickle

    from platform.bench import measurements

    # By value: a Ray worker holds the stdlib's ``platform`` module, so it cannot import this
    # package's modules by name; worker_memory imports only detectors (and ray, torch) itself.
    ray.cloudpickle.register_pickle_by_value(measurements)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False, logging_level=logging.ERROR)
    try:
        return ray.get(ray.remote(measurements.worker_memory).options(num_cpus=1).remote(paths))
    finally:
        ray.shutdown()


def bench_data(paths: dict, size: dict) -> Dict[str, Any]:
    from platform.bench.measurements import data_path

    return data_path(paths, steps=size["data_steps"])


# ------------------------------------------------------------------ report

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m platform.bench", description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[11:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller trials and fewer repeats (5-10 minutes on 2 cores)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the tests: tiny sizes
    ap.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION", help=f"some of: {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=os.path.join("runs", "bench"), help="where bench.json and bench.md go")
    ap.add_argument("--dataset-check", action="store_true",
                    help="only time the driver's COCO annotation check, first and cached (prints; writes nothing)")
    ap.add_argument("--scale", action="store_true",
                    help="only a large study of stand-in trials through the real driver (platform.bench.scale)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 1000], help="--scale: trial counts")
    ap.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"],
                    help="--scale: SQLite files, or PostgreSQL with an MLflow server")
    args = ap.parse_args(argv)
    if args.scale:
        from platform.bench.scale import run_sizes

        run_sizes(args.sizes, args.backends, args.out)
        return 0
    if args.dataset_check:
        from platform.bench.dataset_check import bench_dataset_check

        bench_dataset_check()
        return 0

    from detectors.data.synthetic import generate
    from detectors.evaluation.speed_phase import hardware

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = SIZES[mode]
    result: Dict[str, Any] = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": hardware(),
                              "load_before": os.getloadavg()[0], "sections": {}, "seconds": {}}
    cache = os.path.abspath(os.path.join("runs", "datasets"))
    paths = generate({"num_train": 64, "num_val": 32}, cache)
    jobs: Dict[str, Callable[[], Any]] = {
        "retinanet": lambda: bench_retinanet(paths, size), "orchestration": lambda: bench_orchestration(size, cache),
        "concurrency": lambda: bench_concurrency(size, cache), "evaluation": lambda: bench_evaluation(size),
        "zoo": lambda: bench_zoo(paths, size), "peak": lambda: bench_peak(size, result["sections"]["zoo"]),
        "memory": lambda: bench_memory(paths),
        "data": lambda: bench_data(generate(size["data_set"], cache), size), "padding": lambda: bench_padding(size)}
    names = list(args.only or SECTIONS)
    if "peak" in names:  # the peak section reads the zoo's training figures: the zoo runs (once) before it
        names = [n for n in names if n != "zoo"]
        names.insert(names.index("peak"), "zoo")
    for name in names:
        t0 = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        result["sections"][name] = jobs[name]()
        result["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"bench: {name} done in {result['seconds'][name]:.0f}s", flush=True)
    result["load_after"] = os.getloadavg()[0]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    text = markdown(result)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"written: {os.path.join(args.out, 'bench.json')}, {os.path.join(args.out, 'bench.md')}")
    return 0
