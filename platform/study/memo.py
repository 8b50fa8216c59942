"""A study file's validated expansion, remembered between runs of the same file.

    study, trials = load_expanded("studies/focal_gamma_sweep.yaml")

Validation asks the detectors' registries about every parameter, which imports
torch and torchvision (seconds, most of a cached re-run). Validation and
expansion are a function of the file's bytes, the current directory (relative
paths), the ``detectors`` and ``platform`` sources, and, for COCO datasets, the
annotation files and image directories on disk. A run that validated a file
writes its result to ``<runs_dir>/<study>/expanded.json`` under a key over the
first four, with each dataset path's size and modification time; a later run
whose key and paths match takes the study and trials from there, and anything
else (a changed file, a code change, a touched annotation file, a file that does
not parse) goes through ``load_study`` and ``expand`` as always, so errors read
the same. ``--dry-run`` reads the memo but never writes it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import List, Optional, Tuple

from platform.study.spec import COCO_KEYS

MEMO_FILE = "expanded.json"
_PLATFORM = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the whole driver package


def memo_key(source: str) -> str:
    """sha256 over the file's bytes, the working directory and both packages' sources."""
    from platform.study.expand import detectors_code_version

    with open(source, "rb") as f:
        text = f.read()
    parts = [text, os.getcwd().encode(), detectors_code_version().encode(), detectors_code_version(_PLATFORM).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _dataset_stamps(trials: List[dict]) -> List[list]:
    """(path, size, mtime_ns) of every COCO file and image directory the trials name."""
    paths = sorted({t["dataset"][k] for t in trials if t["dataset"]["kind"] == "coco" for k in COCO_KEYS
                    if t["dataset"].get(k)})
    return [[p, *_stamp(p)] for p in paths]


def _stamp(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [None, None]
    return [st.st_size, st.st_mtime_ns]


def _memo_path(study) -> str:
    return os.path.join(study.output.runs_dir, study.name, MEMO_FILE)


def recall(source: str):
    """(study, trials) from the memo when it matches the file, else None."""
    from platform.study.spec import Study
    from platform.study.load import read_yaml

    try:
        raw = read_yaml(source)
        study = Study.model_validate(raw)  # structure only (no torch): where the memo would be
        with open(_memo_path(study)) as f:
            memo = json.load(f)
        if memo.get("key") != memo_key(source):
            return None
        if any(_stamp(p) != [size, mtime] for p, size, mtime in memo["datasets"]):
            return None
        remembered = Study.model_validate(memo["study"])  # the validated, normalised study
    except Exception:  # noqa: BLE001 - no memo, or one that no longer fits: validate as usual
        return None
    remembered._source = source
    return remembered, memo["trials"]


def remember(source: str, study, trials: List[dict]) -> None:
    """Write the memo of a validated study file (a run, never a dry run)."""
    path = _memo_path(study)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    memo = {"key": memo_key(source), "study": study.model_dump(mode="json"), "trials": trials,
            "datasets": _dataset_stamps(trials)}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(memo, f)
    os.replace(tmp, path)


def load_expanded(source: str) -> Tuple[object, List[dict], bool]:
    """(study, trials, from_memo): the memo when it matches, else ``load_study`` + ``expand``
    (which raise ``StudyError`` for a bad file)."""
    hit: Optional[tuple] = recall(source)
    if hit is not None:
        return hit[0], hit[1], True
    from platform.study.expand import expand
    from platform.study.load import load_study

    study = load_study(source)
    return study, expand(study), False
