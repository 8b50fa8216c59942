"""``python -m platform.bench --scale``: a large study through the real driver, at 10, 100 and 1000 trials.

Each size runs in a fresh process (``python -m platform.bench.scale --one N ...``, so that its peak RSS is
its own) through ``platform.run.main``: validation, the store, MLflow, Ray Tune, the callbacks and the
report, with one change: Tune runs the stand-in trainable of ``platform.bench.standin`` (a trial's
reports and artifacts in about a second) in place of ``detectors.train.trainable.tune_trainable``.
It measures, per size and backend (SQLite files, or PostgreSQL with an ``mlflow server`` on it,
started as the tests do with ``scripts/tracking_server.py``):

  overhead/trial   the driver's own work per trial: wall time inside the Tune callbacks (store and
                   MLflow writes, reading the checkpoint), during which Tune schedules nothing
                   (target <= 50 ms at 1000 trials); the driver's CPU per trial is shown beside it
  store / MLflow   write calls per second of time spent in them (Store.mark_running / record_epochs /
                   record_finished; StudyTracker.start_child / log_metrics / log_dict / log_artifacts...;
                   these run on the driver's MLflow writer thread, outside the callbacks' time)
  report           the pages built at the end of the run (target <= 30 s)
  cached re-run    the same command again in a fresh process, everything cached (target <= 3 s)
  pages            each page's size (target <= 5 MB) and its time to interactive in headless Chromium:
                   loaded and every plot rendered (target <= 3 s)
  peak RSS         the driver's (``ru_maxrss``)

The table (with each figure's growth exponent between sizes, the slope on log-log axes: 1 grows with the
trials, 0 does not) goes to ``<out>/scale.md`` and ``scale.json``, the log-log plot to ``scale.html``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, List, Optional
from unittest import mock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGETS = {"overhead_ms": 50.0, "report_s": 30.0, "cached_s": 3.0, "page_mb": 5.0, "tti_s": 3.0}
STORE_WRITES = ("mark_running", "record_epochs", "record_finished", "record_failed")
MLFLOW_WRITES = ("start_child", "log_metrics", "log_steps", "set_tags", "log_dict", "log_artifacts", "end_child")
READS = {"Store": ("trial_epochs",), "StudyTracker": ("find_child",)}  # timed, not counted as writes
CALLBACKS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")
EPOCHS = 8  # the headline study's


def study_yaml(root: str, n: int, datasets: str, store_url: Optional[str], mlflow_uri: Optional[str]) -> str:
    """A study of ``n`` trials (seeds 0..n-1 of one variant) on the headline study's val set size."""
    import yaml

    study = {"name": f"scale{n}", "description": f"Scale benchmark: {n} stand-in trials.",
             "dataset": {"kind": "synthetic", "synthetic": {"num_train": 16, "num_val": 150},
                         "cache_dir": datasets},
             "detector": {"name": "retinanet", "scale": "tiny"}, "loss": {"name": "focal"},
             "train": {"epochs": EPOCHS, "batch_size": 8},
             "eval": {"speed": {"enabled": False}},  # no speed phase: it would time real detectors
             "sweep": {"seeds": list(range(n))}, "resources": {"cpus_per_trial": 1},
             "output": {"runs_dir": os.path.join(root, "runs"), "reports_dir": os.path.join(root, "reports")}}
    tracking = {k: v for k, v in (("store_url", store_url), ("mlflow_uri", mlflow_uri)) if v}
    if tracking:
        study["tracking"] = tracking
    path = os.path.join(root, f"scale{n}.yaml")
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(study, f)
    return path


class _Timer:
    """Calls and seconds of some methods of a class, patched for the run."""

    def __init__(self) -> None:
        self.calls: Dict[str, int] = {}
        self.seconds: Dict[str, float] = {}

    def patch(self, stack: ExitStack, cls, names) -> None:
        for name in names:
            stack.enter_context(mock.patch.object(cls, name, self.timed(name, getattr(cls, name))))

    def timed(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.calls[name] = self.calls.get(name, 0) + 1
        return timed

    def total(self, names=None) -> tuple:
        names = names or list(self.calls)
        return sum(self.calls.get(n, 0) for n in names), sum(self.seconds.get(n, 0.0) for n in names)


@contextmanager
def _standin_driver(template: str, seconds: float, timer: _Timer) -> Iterator[None]:
    """The real driver with the stand-in trainable and timed callbacks, store, MLflow and report."""
    from platform.bench import standin
    from platform.runner import callbacks, orchestrate
    from platform.track.store import Store
    from platform.track.tracking import StudyTracker

    standin.register()
    trainable = standin.make_trainable(template, seconds)
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(
            orchestrate, "run_trials", functools.partial(orchestrate.run_trials, trainable=trainable)))
        timer.patch(stack, callbacks.StudyCallback, CALLBACKS)
        timer.patch(stack, Store, STORE_WRITES + READS["Store"])
        timer.patch(stack, StudyTracker, MLFLOW_WRITES + READS["StudyTracker"])
        build = timer.timed("report", orchestrate.write_report)

        def report(*args, **kwargs):  # the peak before the pages: what the trials cost, apart from the report's
            timer.rss_before_report_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return build(*args, **kwargs)

        stack.enter_context(mock.patch.object(orchestrate, "write_report", report))
        yield


def page_figures(reports: str, study: str) -> Dict[str, Dict[str, float]]:
    """{page: {mb, tti_s}} of the study's pages and the all-studies index: size, and seconds from
    navigation to every plot rendered in headless Chromium (``tests/dashboards/test_browser.py``'s setup)."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    pages = sorted(os.path.join(study, p) for p in os.listdir(os.path.join(reports, study)) if p.endswith(".html"))
    pages.append("index.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--no-first-run", "--window-size=1280,900",
                    f"--user-data-dir={profile}"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        driver.set_page_load_timeout(120)
        out = {}
        try:
            for page in pages:
                path = os.path.join(reports, page)
                t0 = time.perf_counter()
                driver.get("file://" + path)  # returns once the load event fired
                while driver.execute_script(
                        "const d = document.querySelectorAll('.plotly-graph-div').length;"
                        "return d > document.querySelectorAll('.js-plotly-plot .main-svg').length ? 1 : 0"):
                    if time.perf_counter() - t0 > 60:
                        break
                    time.sleep(0.02)
                out[page] = {"mb": os.path.getsize(path) / 1e6, "tti_s": time.perf_counter() - t0}
        finally:
            driver.quit()
    return out


def one(n: int, root: str, store_url: Optional[str], mlflow_uri: Optional[str], seconds: float) -> Dict[str, Any]:
    """One size in this process: the study run, then the cached re-run and the pages. The figures as a dict."""
    from platform import run as platform_run
    from platform.bench import standin

    datasets = os.path.join(os.path.dirname(root), "datasets")
    path = study_yaml(root, n, datasets, store_url, mlflow_uri)
    from detectors.data.synthetic import generate

    val = generate({"num_train": 16, "num_val": 150}, datasets)["val_annotations"]
    template = standin.write_template(val, os.path.join(root, "template"))
    timer = _Timer()
    load_start = os.getloadavg()
    cpu0, t0 = time.process_time(), time.perf_counter()
    with _standin_driver(template, seconds, timer):
        code = platform_run.main([path])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if code != 0:
        raise RuntimeError(f"the study of {n} trials exited with {code}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    cached = subprocess.run([sys.executable, "-m", "platform.run", path], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    cached_s = time.perf_counter() - t1
    if "everything was cached" not in cached.stdout:
        raise RuntimeError(f"the re-run was not cached: {cached.stdout[-500:]} {cached.stderr[-500:]}")
    pages = page_figures(os.path.join(root, "reports"), f"scale{n}")
    store_calls, store_s = timer.total(STORE_WRITES)
    mlflow_calls, mlflow_s = timer.total(MLFLOW_WRITES)
    callback_calls, callback_s = timer.total(CALLBACKS)
    return {"trials": n, "wall_s": wall, "overhead_ms": 1000 * callback_s / n, "driver_cpu_ms": 1000 * cpu / n,
            "store_writes_s": store_calls / max(store_s, 1e-9), "store_calls": store_calls,
            "mlflow_writes_s": mlflow_calls / max(mlflow_s, 1e-9), "mlflow_calls": mlflow_calls,
            "cached_s": cached_s, "report_s": timer.seconds.get("report", math.nan),
            "page_mb": max(p["mb"] for p in pages.values()), "tti_s": max(p["tti_s"] for p in pages.values()),
            "rss_mb": rss_mb, "rss_before_report_mb": getattr(timer, "rss_before_report_mb", math.nan),
            "pages": pages, "calls": timer.calls, "seconds": timer.seconds,
            "load": os.getloadavg(), "load_start": load_start}


# --------------------------------------------------------------------------- the sizes, the table, the plot

COLUMNS = (("trials", "trials", "{:d}"), ("overhead_ms", "overhead ms/trial", "{:.1f}"),
           ("driver_cpu_ms", "driver CPU ms/trial", "{:.0f}"), ("store_writes_s", "store writes/s", "{:.0f}"),
           ("mlflow_writes_s", "MLflow writes/s", "{:.0f}"), ("cached_s", "cached re-run s", "{:.2f}"),
           ("report_s", "report s", "{:.1f}"), ("page_mb", "largest page MB", "{:.2f}"),
           ("tti_s", "time to interactive s", "{:.2f}"), ("rss_mb", "peak RSS MB", "{:.0f}"),
           ("wall_s", "study wall s", "{:.0f}"))


def growth(rows: List[Dict[str, Any]], key: str) -> List[Optional[float]]:
    """The slope of ``key`` against trials on log-log axes between each size and the one before."""
    out: List[Optional[float]] = [None]
    for a, b in zip(rows, rows[1:]):
        ok = a[key] > 0 and b[key] > 0 and b["trials"] != a["trials"]
        out.append(math.log(b[key] / a[key]) / math.log(b["trials"] / a["trials"]) if ok else None)
    return out


def markdown(results: Dict[str, List[Dict[str, Any]]]) -> str:
    lines = []
    for backend, rows in results.items():
        lines += [f"### {backend}", "", "| " + " | ".join(label for _, label, _ in COLUMNS) + " | load avg |",
                  "|" + "---|" * (len(COLUMNS) + 1)]
        for r in rows:
            cells = [fmt.format(int(r[k]) if k == "trials" else r[k]) for k, _, fmt in COLUMNS]
            lines.append("| " + " | ".join(cells) + f" | {r['load'][0]:.1f} |")
        slopes = {k: growth(rows, k) for k, _, _ in COLUMNS[1:]}
        for i in range(1, len(rows)):
            cells = [f"{slopes[k][i]:+.2f}" if slopes[k][i] is not None else "-" for k, _, _ in COLUMNS[1:]]
            lines.append(f"| growth {rows[i - 1]['trials']}->{rows[i]['trials']} | " + " | ".join(cells) + " | |")
        lines.append("")
    lines.append("targets at 1000 trials: " + ", ".join(f"{k} <= {v:g}" for k, v in TARGETS.items()))
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, List[Dict[str, Any]]], path: str) -> None:
    """Every figure against trials on log-log axes, one line per backend, one panel per figure."""
    from plotly.subplots import make_subplots

    keys = [(k, label) for k, label, _ in COLUMNS[1:]]
    fig = make_subplots(rows=2, cols=5, subplot_titles=[label for _, label in keys])
    for i, (k, _) in enumerate(keys):
        for backend, rows in results.items():
            fig.add_scatter(x=[r["trials"] for r in rows], y=[r[k] for r in rows], name=backend, mode="lines+markers",
                            legendgroup=backend, showlegend=i == 0, row=i // 5 + 1, col=i % 5 + 1)
        fig.update_xaxes(type="log", row=i // 5 + 1, col=i % 5 + 1)
        fig.update_yaxes(type="log", row=i // 5 + 1, col=i % 5 + 1)
    fig.update_layout(height=700, width=1600, title="detbench driver at scale (log-log)")
    fig.write_html(path, include_plotlyjs=True)


def run_sizes(sizes: List[int], backends: List[str], out: str, seconds: float = 1.0) -> Dict[str, Any]:
    """Every size on every backend, each in a fresh process; writes scale.json, scale.md, scale.html,
    and leaves the studies (store, MLflow, pages; about 4 GB for 1000 trials) under ``<out>/scale-studies``."""
    import shutil

    results: Dict[str, List[Dict[str, Any]]] = {}
    work = os.path.abspath(os.path.join(out, "scale-studies"))
    shutil.rmtree(work, ignore_errors=True)  # a study left by an earlier run would be all cached
    os.makedirs(work)
    for backend in backends:
        services = None
        if backend == "postgresql":
            sys.path.insert(0, REPO_ROOT)
            from scripts import tracking_server

            services = tracking_server.start(os.path.join(work, "services"), mlflow_port=tracking_server.free_port())
        try:
            for n in sizes:
                root = os.path.join(work, backend, str(n))
                cmd = [sys.executable, "-m", "platform.bench.scale", "--one", str(n), "--root", root,
                       "--seconds", str(seconds), "--json", os.path.join(root, "figures.json")]
                if services:
                    cmd += ["--store-url", services["store_url"], "--mlflow-uri", services["mlflow_uri"]]
                print(f"scale: {backend}, {n} trials (load {os.getloadavg()[0]:.1f})", flush=True)
                proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{backend} {n} trials failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
                with open(os.path.join(root, "figures.json")) as f:
                    results.setdefault(backend, []).append(json.load(f))
                r = results[backend][-1]
                print("  " + ", ".join(f"{label} {fmt.format(int(r[k]) if k == 'trials' else r[k])}"
                                       for k, label, fmt in COLUMNS[1:]), flush=True)
        finally:
            if services:
                tracking_server.stop_mlflow(services["mlflow"])
                tracking_server.stop_postgres(services["postgres"])
    with open(os.path.join(out, "scale.json"), "w") as f:
        json.dump({"results": results, "machine": {"cpus": os.cpu_count()}, "work": work}, f, indent=1)
    table = markdown(results)
    with open(os.path.join(out, "scale.md"), "w") as f:
        f.write(table)
    plot(results, os.path.join(out, "scale.html"))
    print(table)
    print(f"written: {out}/scale.json, scale.md, scale.html (log-log plot); studies under {work}")
    return results


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m platform.bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--one", type=int, required=True, help="this many trials, in this process")
    ap.add_argument("--root", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--store-url")
    ap.add_argument("--mlflow-uri")
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    figures = one(args.one, args.root, args.store_url, args.mlflow_uri, args.seconds)
    with open(args.json, "w") as f:
        json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
