"""Checking a COCO dataset's annotation files on the driver, before anything starts.

    check_datasets(study, trials)   # raises DatasetFaults (a StudyError), one line per fault

A COCO file that a Ray worker cannot load would otherwise fail every trial after
Ray, MLflow and the store started. Each train and val annotation file is parsed
(stdlib ``json``) and checked: the COCO schema (``images``, ``categories`` and
``annotations`` lists of records with the fields the loader uses, of the right
types), unique image, annotation and category ids, every annotation's
``image_id`` and ``category_id`` known, each ``bbox`` ``[x, y, w, h]`` finite,
of positive width and height and inside its image (within ``BORDER_PX``: COCO's
float boxes touch the border, e.g. ``x + w = 640.0000001`` on a 640 px image),
and every image's file present in the images directory (one ``os.scandir`` per
directory, not a stat per image). The rules are ``detectors.data.coco``'s, which
checks the same file again in the worker, plus the box checks the loader does
silently (it clips and drops): an image's ``width`` / ``height`` may be absent
(the loader reads the file's header; its boxes are then only checked for
positive size), and a file without ``annotations`` is a test-set file, allowed.

Every fault is one line, ``<file>: <record>: <message>``, for example

    /data/val.json: annotations[1234] (id 99): bbox [10, 10, 0, 5] has zero width

at most ``MAX_FAULTS`` of them and then a count of the rest. Schema faults stop
the check of that file (the later checks need typed columns); the others are
found all at once with numpy over columns of ids and boxes.

A passed check is remembered under ``<dataset.cache_dir>/checked/``, keyed on the
file's (absolute path, size, mtime_ns), the images directory and this module's
source; a verdict also holds each scanned image directory's mtime_ns (adding or
removing a file changes it), so a cached check is a few stats. When that quick
key misses (a touched or copied file) the file's sha256, computed over bytes read
for parsing anyway, finds a verdict of the same content. Faults are never
remembered, and ``write=False`` (a dry run) reads verdicts but writes none.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from detectors.registry import show
from platform.study.load import StudyError

BORDER_PX = 1.0   # how far a box may reach past its image's border
MAX_FAULTS = 10   # lines reported per file; the rest are counted
CHECKED_DIR = "checked"
_MISSING = object()


class DatasetFaults(StudyError):
    """The faults of one annotation file: ``str(err)`` is the first, ``err.lines`` all of them."""

    def __init__(self, file: str, faults: List[Tuple[str, str]], total: int) -> None:
        super().__init__(file, *faults[0])
        self.lines = [str(StudyError(file, record, message)) for record, message in faults]
        if total > len(faults):
            self.lines.append(str(StudyError(file, "", f"{total - len(faults)} more faults not shown "
                                             f"(the first {len(faults)} are above)")))


def check_datasets(study, trials: List[dict], write: bool = True) -> List[str]:
    """Check every COCO (images dir, annotation file) pair the trials name; raises DatasetFaults.

    Returns one line per file checked afresh (not from a remembered verdict), for the log.
    """
    pairs = []
    for trial in trials:
        ds = trial["dataset"]
        if ds["kind"] != "coco":
            continue  # the synthetic set is the platform's own output
        for split in ("train", "val"):
            pair = (ds[f"{split}_images"], ds[f"{split}_annotations"], ds["cache_dir"])
            if pair not in pairs:
                pairs.append(pair)
    fresh = []
    for images_dir, ann_file, cache_dir in pairs:
        counts = check_coco(ann_file, images_dir, cache_dir, write=write)
        if counts is not None:
            fresh.append(f"dataset: checked {ann_file} ({counts['images']} images, {counts['annotations']} "
                         f"boxes, {counts['categories']} categories)")
    return fresh


def check_coco(ann_file: str, images_dir: str, cache_dir: Optional[str] = None,
               write: bool = True) -> Optional[Dict[str, int]]:
    """Check one annotation file against its images directory; raises DatasetFaults.

    Returns the file's counts when it was checked afresh, None when a remembered verdict held.
    """
    ann_file, images_dir = os.path.abspath(ann_file), os.path.abspath(images_dir)
    cache = os.path.join(cache_dir, CHECKED_DIR) if cache_dir else None
    quick = _quick_key(ann_file, images_dir)
    if cache and quick and _valid(_read_verdict(cache, quick)):
        return None
    try:
        with open(ann_file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StudyError(ann_file, "", (e.strerror or str(e)).lower()) from None
    content = _key(hashlib.sha256(data).hexdigest(), images_dir)  # the same bytes under another name or time
    verdict = _read_verdict(cache, content) if cache else None
    fresh = not _valid(verdict)
    if fresh:
        coco = _parse(ann_file, data)
        del data  # the bytes of a 450 MB file, no longer needed
        dirs = _check(ann_file, images_dir, coco)
        verdict = {"dirs": dirs, "counts": {k: len(coco.get(k, ())) for k in ("images", "annotations", "categories")}}
    if cache and write:
        _write_verdicts(cache, [content] + ([quick] if quick else []), verdict)
    return verdict["counts"] if fresh else None


# --------------------------------------------------------------------------- the checks

def _parse(file: str, data: bytes):
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise DatasetFaults(file, [(f"line {e.lineno}, column {e.colno}", f"not valid JSON: {e.msg}")], 1) from None
    except UnicodeDecodeError as e:
        raise DatasetFaults(file, [(f"byte {e.start}", "not UTF-8 text: not a COCO annotation file")], 1) from None
    except RecursionError:
        raise DatasetFaults(file, [("", "nested too deeply: not a COCO annotation file")], 1) from None


def _check(file: str, images_dir: str, coco) -> Dict[str, int]:
    """All checks of one parsed file; returns the scanned image directories' mtime_ns."""
    faults = _Faults(file)
    if not isinstance(coco, dict):
        faults.add("", f"top level must be a JSON object with images, annotations and categories, got "
                       f"{type(coco).__name__}")
        faults.raise_any()
    for key in ("images", "categories", "annotations"):
        if key == "annotations" and key not in coco:
            continue  # a test-set file: images only
        if not isinstance(coco.get(key, _MISSING), list):
            faults.add(key, "required list is missing" if key not in coco else f"must be a list, got "
                       f"{type(coco[key]).__name__}")
    faults.raise_any()
    images, categories, anns = coco["images"], coco["categories"], coco.get("annotations", [])
    faults.lists = {"images": images, "categories": categories, "annotations": anns}
    if not categories:
        faults.add("categories", "must not be empty")

    # schema: records that are objects, with the fields the loader reads, of the right types
    for key, records in (("images", images), ("categories", categories), ("annotations", anns)):
        if not set(map(type, records)) <= {dict}:
            faults.where(key, np.array([type(r) is not dict for r in records], dtype=bool),
                         lambda i: "must be a JSON object")
    faults.raise_any()
    img_id = _typed(faults, "images", images, "id", int)
    _typed(faults, "images", images, "file_name", str)
    for key in ("width", "height"):
        _typed(faults, "images", images, key, int, low=1, optional=True)
    cat_id = _typed(faults, "categories", categories, "id", int)
    # COCOeval keeps matched annotation ids with 0 meaning "unmatched": id 0 would turn a hit into a miss
    ann_id = _typed(faults, "annotations", anns, "id", int, low=1)
    ann_img = _typed(faults, "annotations", anns, "image_id", int)
    ann_cat = _typed(faults, "annotations", anns, "category_id", int)
    _typed(faults, "annotations", anns, "iscrowd", int, low=0, high=1, optional=True)
    boxes = _boxes(faults, anns)
    faults.raise_any()
    img_id, cat_id, ann_id, ann_img, ann_cat = (_int64(faults, k, c) for k, c in (
        ("images", img_id), ("categories", cat_id), ("annotations", ann_id), ("annotations", ann_img),
        ("annotations", ann_cat)))
    faults.raise_any()

    for key, ids in (("images", img_id), ("categories", cat_id), ("annotations", ann_id)):
        _unique(faults, key, ids)
    image_row = _lookup(img_id, ann_img)
    faults.where("annotations", image_row < 0, lambda i: f"image_id {ann_img[i]} is not in images")
    faults.where("annotations", _lookup(cat_id, ann_cat) < 0,
                 lambda i: f"category_id {ann_cat[i]} is not in categories")
    _check_boxes(faults, boxes, images, image_row)
    dirs = _check_files(faults, images_dir, images)
    faults.raise_any()
    return dirs


def _check_boxes(faults: "_Faults", boxes: np.ndarray, images: list, image_row: np.ndarray) -> None:
    """Finite, positive width and height, inside the image's width x height (within BORDER_PX).

    ``boxes`` float64 ``[N, 4]`` xywh; ``image_row`` int ``[N]``, each box's row in ``images`` (-1: none).
    """
    x, y, w, h = boxes.T
    anns = faults.lists["annotations"]

    def shown(i: int) -> str:  # the box as the file writes it
        return json.dumps(anns[i]["bbox"])
    finite = np.isfinite(boxes).all(axis=1)
    faults.where("annotations", ~finite, lambda i: f"bbox {shown(i)} is not 4 finite numbers")
    for size, name in ((w, "width"), (h, "height")):
        faults.where("annotations", finite & (size <= 0),
                     lambda i, s=size, n=name: f"bbox {shown(i)} has {'zero' if s[i] == 0 else 'negative'} {n}")
    width = np.array([_int_or(r.get("width"), np.inf) for r in images], dtype=np.float64)
    height = np.array([_int_or(r.get("height"), np.inf) for r in images], dtype=np.float64)
    known = image_row >= 0
    row = np.where(known, image_row, 0)
    img_w, img_h = width[row], height[row]  # inf: no size in the record, nothing to be outside of
    outside = known & finite & ((x < -BORDER_PX) | (y < -BORDER_PX) | (x + w > img_w + BORDER_PX)
                                | (y + h > img_h + BORDER_PX))

    def where_out(i: int) -> str:
        if x[i] < -BORDER_PX or y[i] < -BORDER_PX:
            side = f"starts at x = {x[i]:g}" if x[i] < -BORDER_PX else f"starts at y = {y[i]:g}"
        elif x[i] + w[i] > img_w[i] + BORDER_PX:
            side = f"ends at x + w = {x[i] + w[i]:g}, past the width {img_w[i]:g}"
        else:
            side = f"ends at y + h = {y[i] + h[i]:g}, past the height {img_h[i]:g}"
        return (f"bbox {shown(i)} is outside its image {faults.name('images', int(row[i]))}: {side} "
                f"({BORDER_PX:g} px tolerance)")

    faults.where("annotations", outside, where_out)


def _check_files(faults: "_Faults", images_dir: str, images: list) -> Dict[str, int]:
    """Every image's file in its directory: one listing per directory. Returns {dir: mtime_ns}."""
    names = [r["file_name"] for r in images]
    if any(os.sep in n or (os.altsep and os.altsep in n) for n in names):  # files in subdirectories
        split = [os.path.split(os.path.normpath(os.path.join(images_dir, n))) for n in names]
    else:  # COCO's layout: every file in images_dir itself
        split = [(images_dir, n) for n in names]
    listed: Dict[str, set] = {}
    dirs: Dict[str, int] = {}
    for d in dict.fromkeys(d for d, _ in split):
        try:
            dirs[d] = os.stat(d).st_mtime_ns  # before the listing: a change during it shows next time
            with os.scandir(d) as entries:
                listed[d] = {e.name for e in entries if e.is_file()}
        except OSError:
            listed[d] = set()
    missing = np.array([name not in listed[d] for d, name in split], dtype=bool)
    faults.where("images", missing, lambda i: f"file {os.path.join(*split[i])} does not exist")
    return dirs


# --------------------------------------------------------------------------- columns

def _is_int(v) -> bool:
    return type(v) is int  # not bool, not 1.0


def _int_or(v, default):
    return v if _is_int(v) else default


def _typed(faults: "_Faults", key: str, records: list, field: str, kind: type, low: Optional[int] = None,
           high: Optional[int] = None, optional: bool = False) -> list:
    """``records``' values of ``field`` (a plain list): integers in [low, high], or non-empty strings;
    a fault for each missing or mistyped one."""
    column = [r.get(field, _MISSING) for r in records]
    present = [v for v in column if v is not _MISSING] if optional else column
    # the common case in a few passes at C speed (type() excludes bool, a subclass of int)
    if set(map(type, present)) <= {kind} and (all(present) if kind is str else
                                              (low is None or min(present, default=low) >= low)
                                              and (high is None or max(present, default=high) <= high)):
        return column
    if kind is str:
        want = "a non-empty string"
    else:
        want = "an integer" + (f" >= {low}" if high is None and low is not None else
                               f" from {low} to {high}" if high is not None else "")

    def ok(v) -> bool:
        if kind is str:
            return type(v) is str and v != ""
        return type(v) is int and (low is None or v >= low) and (high is None or v <= high)

    for i, v in enumerate(column):
        if v is _MISSING and not optional:
            faults.add(faults.name(key, i), f"required field '{field}' is missing")
        elif v is not _MISSING and not ok(v):
            faults.add(faults.name(key, i), f"{field} must be {want}, got {show(v)}")
    return column


def _boxes(faults: "_Faults", anns: list) -> np.ndarray:
    """float64 ``[N, 4]`` xywh of every annotation; faults for a bbox that is not 4 numbers."""
    column = [a.get("bbox", _MISSING) for a in anns]
    numbers = {int, float}
    if set(map(type, column)) <= {list} and set(map(len, column)) <= {4} \
            and set(map(type, itertools.chain.from_iterable(column))) <= numbers:
        return np.array(column, dtype=np.float64).reshape(-1, 4)
    for i, b in enumerate(column):
        if b is _MISSING:
            faults.add(faults.name("annotations", i), "required field 'bbox' is missing")
        elif not (type(b) is list and len(b) == 4 and all(type(v) in numbers for v in b)):
            faults.add(faults.name("annotations", i), f"bbox must be 4 numbers [x, y, w, h], got {show(b)}")
    return np.zeros((0, 4))


def _int64(faults: "_Faults", key: str, column: list) -> np.ndarray:
    try:
        return np.array(column, dtype=np.int64)
    except OverflowError:  # JSON integers have no limit
        i = next(i for i, v in enumerate(column) if not -2**63 <= v < 2**63)
        faults.add(faults.name(key, i), f"{show(column[i])} is too large for an id")
        return np.zeros(0, dtype=np.int64)


def _unique(faults: "_Faults", key: str, ids: np.ndarray) -> None:
    """A fault at each repeat of an id, naming its first record."""
    order = np.argsort(ids, kind="stable")
    repeat = np.zeros(len(ids), dtype=bool)
    same = ids[order[1:]] == ids[order[:-1]]
    repeat[order[1:][same]] = True
    first = {}
    if repeat.any():
        for i in order:  # an id's first record comes first in a stable sort
            first.setdefault(int(ids[i]), int(i))
    faults.where(key, repeat, lambda i: f"duplicate id {ids[i]} (also {key}[{first[int(ids[i])]}])")


def _lookup(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Each wanted id's row in ``ids`` (unique), -1 where it is not there."""
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], wanted).clip(0, max(len(ids) - 1, 0))
    found = (ids[order][pos] == wanted) if len(ids) else np.zeros(len(wanted), dtype=bool)
    return np.where(found, order[pos] if len(ids) else -1, -1)


class _Faults:
    """The faults found in one file: the first MAX_FAULTS as (record, message), and how many in all."""

    def __init__(self, file: str) -> None:
        self.file, self.found, self.total = file, [], 0
        self.lists: Dict[str, list] = {}  # "images", "categories", "annotations": the records named by index

    def name(self, key: str, i: int) -> str:
        """``annotations[12] (id 99)``: the record's place in its list, and its id where it has one."""
        record = self.lists[key][i]
        rid = record.get("id") if isinstance(record, dict) else None
        return f"{key}[{i}] (id {rid})" if _is_int(rid) else f"{key}[{i}]"

    def add(self, record: str, message: str) -> None:
        self.total += 1
        if len(self.found) < MAX_FAULTS:
            self.found.append((record, message))

    def where(self, key: str, bad: np.ndarray, message: Callable[[int], str]) -> None:
        """A fault for each True in ``bad`` (indices into the ``key`` list); only the first few are worded."""
        bad_idx = np.flatnonzero(bad)
        for i in bad_idx[:max(MAX_FAULTS - len(self.found), 0)]:
            self.found.append((self.name(key, int(i)), message(int(i))))
        self.total += len(bad_idx)

    def raise_any(self) -> None:
        if self.total:
            raise DatasetFaults(self.file, self.found, self.total)


# --------------------------------------------------------------------------- remembered verdicts

def _source_digest() -> str:
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


_SOURCE = _source_digest()  # a changed check checks every file again


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([_SOURCE, *parts]).encode()).hexdigest()


def _quick_key(ann_file: str, images_dir: str) -> Optional[str]:
    try:
        st = os.stat(ann_file)
    except OSError:
        return None
    return _key(ann_file, st.st_size, st.st_mtime_ns, images_dir)


def _read_verdict(cache: str, key: str) -> Optional[dict]:
    try:
        with open(os.path.join(cache, f"{key}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _valid(verdict: Optional[dict]) -> bool:
    """A verdict holds while every image directory it listed is unchanged."""
    if not isinstance(verdict, dict):
        return False
    for d, mtime in verdict.get("dirs", {}).items():
        try:
            if os.stat(d).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return "counts" in verdict


def _write_verdicts(cache: str, keys: List[str], verdict: dict) -> None:
    try:
        os.makedirs(cache, exist_ok=True)
        for key in keys:
            path = os.path.join(cache, f"{key}.json")
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(verdict, f)
            os.replace(tmp, path)
    except OSError:
        pass  # only a cache: the next run checks again
