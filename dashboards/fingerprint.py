"""Whether a study's pages are current: a fingerprint of everything they are built from.

    fp = fingerprint(store, "focal_gamma_sweep")
    if not is_current(reports_dir, "focal_gamma_sweep", fp): build ...; mark_current(...)

The pages read the results store alone, so a page built from the same store
content by the same dashboards code is the same page. The fingerprint covers
every study row (the all-studies index lists them all), every trial row of
every study and of the study's tuning samples (``<study>.tune``, which
``studies()`` leaves out; status, hashes, times, attempts, runs: a finished,
failed or re-run trial changes them), the speed figures the trials name, the dashboards source
and the bootstrap setting. It is cheap (a few queries, no metrics read) and
imports nothing heavy, so a cached ``platform.run`` can skip the build.

The fingerprint file holds the fingerprint on its first line and then the
study's pages beyond ``PAGES`` that the build wrote (``tuning.html`` for a study
with tuning trials), one a line, so a missing one is rebuilt too.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

FINGERPRINT_FILE = ".fingerprint"
PAGES = ("index.html", "accuracy.html", "speed.html", "loss.html")  # every study's; others are in the file
_DASHBOARDS = os.path.dirname(os.path.abspath(__file__))


def code_version(root: str = _DASHBOARDS) -> str:
    """sha256 over the dashboards package's sources and paper tables."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(f for f in filenames if f.endswith((".py", ".yaml"))):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, root).encode() + b"\0" + f.read())
    return h.hexdigest()


def fingerprint(store, study_name: str, resamples: Optional[int] = None) -> str:
    """sha256 of what the study's pages (and the all-studies index) are built from."""
    studies = [{k: str(v) for k, v in s.items() if k != "spec"} | {"spec": s["spec"]} for s in store.studies()]
    tuning = study_name + getattr(store, "TUNING_SUFFIX", ".tune")
    trials = {name: [[t["config_hash"], t["trial_key"], t["status"], str(t["started_at"]), str(t["finished_at"]),
                      t["attempts"], t["mlflow_run_id"], t["error"]] for t in store.trials(name)]
              for name in [s["name"] for s in studies] + [tuning]}
    speed_keys = store.trial_data(study_name, "speed_key")
    speed = {d: str(f["measured_at"]) for d, f in store.speed_figures(set(speed_keys.values())).items()} \
        if speed_keys else {}
    payload = {"studies": studies, "trials": trials, "speed_keys": speed_keys, "speed": speed,
               "code": code_version(), "resamples": resamples, "study": study_name}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def is_current(reports_dir: str, study_name: str, fp: str) -> bool:
    """The pages exist and were built from data with this fingerprint."""
    study_dir = os.path.join(reports_dir, study_name)
    try:
        with open(os.path.join(study_dir, FINGERPRINT_FILE)) as f:
            recorded, *built = f.read().split()
    except (OSError, ValueError):  # ValueError: an empty file
        return False
    needed = [os.path.join(study_dir, p) for p in (*PAGES, *built)] + [os.path.join(reports_dir, "index.html")]
    return recorded == fp and all(os.path.isfile(p) for p in needed)


def mark_current(reports_dir: str, study_name: str, fp: str, pages: Sequence[str] = PAGES) -> None:
    """Record that the study's pages (``pages``, those beyond ``PAGES`` kept in the file) were built from ``fp``."""
    path = os.path.join(reports_dir, study_name, FINGERPRINT_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in (fp, *(p for p in pages if p not in PAGES))))
