"""pycocotools plumbing, in one place: a ``COCO`` over a dict, ``loadRes`` that takes an empty list,
and the part of an annotation file that box evaluation reads.

Used by evaluation (``detectors.evaluation.evaluate``), the dataset loader (its ``coco``
ground truth) and the driver side: the callback stores ``bbox_ground_truth`` of
the val file once per val set, and the pages' image bootstrap evaluates on it.
No torch here, so the report pages can import it cheaply.

Two COCOeval backends give the same numbers: ``faster`` (the faster-coco-eval
package's C++ matching and accumulation, the default when it is installed) and
``pycocotools`` (the reference; the tests hold the two equal). The environment
variable ``DETBENCH_EVAL_BACKEND`` picks one (workers inherit the driver's
environment on a local Ray). ``platform.bench`` times both: on 500 and 5000
images faster-coco-eval gave the same summary statistics and precision arrays
to within 3e-16 (the last bits of a float), 4-7x faster.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
from typing import List, Optional, Sequence, Tuple

from pycocotools.coco import COCO

__all__ = ["coco_ground_truth", "load_results", "bbox_ground_truth", "BBOX_FIELDS", "EVAL_BACKENDS",
           "eval_backend", "bbox_eval"]

EVAL_BACKENDS = ("faster", "pycocotools")

# What COCOeval (bbox) and loadRes read of each ground-truth record; segmentation
# polygons, file names and licences are dead weight for box AP.
BBOX_FIELDS = {"images": ("id", "width", "height"),
               "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
               "categories": ("id", "name", "supercategory")}


def coco_ground_truth(data: dict) -> COCO:
    """A pycocotools ``COCO`` over a COCO-format dict (no file read, no prints).

    COCOeval needs ``iscrowd`` and ``area`` on every ground-truth annotation;
    missing ones are filled in (0, and the box area) on copies, the input is untouched.
    """
    coco = COCO()
    coco.dataset = {**data, "annotations": [_complete(a) for a in data.get("annotations", [])]}
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        coco.createIndex()
    return coco


def bbox_ground_truth(data: dict) -> dict:
    """The part of a COCO annotation dict that bbox evaluation reads (``BBOX_FIELDS``), as a new dict.

    ``coco_ground_truth`` of the result gives the same COCOeval (bbox) numbers as
    of ``data``; segmentation polygons, most of a COCO instances file, are left out.
    """
    records = {"images": data.get("images", []), "categories": data.get("categories", []),
               "annotations": [_complete(a) for a in data.get("annotations", [])]}
    return {part: [{k: r[k] for k in BBOX_FIELDS[part] if k in r} for r in rows] for part, rows in records.items()}


def _complete(ann: dict) -> dict:
    """A copy of a ground-truth annotation with ``iscrowd`` (0) and ``area`` (the box's) when missing."""
    ann = dict(ann)
    ann.setdefault("iscrowd", 0)
    ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    return ann


def load_results(coco_gt: COCO, results: List[dict]) -> COCO:
    """``coco_gt.loadRes`` on copies of ``results``, also for an empty list.

    loadRes adds ``id``, ``area``, ``iscrowd`` and ``segmentation`` to the dicts
    it is given; copies keep the caller's results (written as detections.json)
    clean. It also fails on an empty list (it reads ``anns[0]``), so an empty
    detection set gets an empty results object and COCOeval runs as usual:
    0.0 where there is ground truth, None where there is none.
    """
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:5]}")
    if not results:
        return coco_ground_truth({"images": list(coco_gt.dataset["images"]), "annotations": [],
                                  "categories": copy.deepcopy(coco_gt.dataset.get("categories", []))})
    with contextlib.redirect_stdout(io.StringIO()):  # "Loading and preparing results..."
        return coco_gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])


def eval_backend(name: Optional[str] = None) -> str:
    """The COCOeval backend to use: ``name``, else ``$DETBENCH_EVAL_BACKEND``, else ``faster``
    when faster-coco-eval is installed, else ``pycocotools``."""
    name = name or os.environ.get("DETBENCH_EVAL_BACKEND") or (
        "faster" if importlib.util.find_spec("faster_coco_eval") else "pycocotools")
    if name not in EVAL_BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend '{name}' (known: {', '.join(EVAL_BACKENDS)})")
    return name


def _faster_ground_truth(coco_gt: COCO):
    """faster-coco-eval's ``COCO`` over the same records, built once per ground truth object."""
    fast = getattr(coco_gt, "_detbench_faster", None)
    if fast is None:
        from faster_coco_eval import COCO as FasterCOCO

        fast = FasterCOCO(copy.deepcopy(coco_gt.dataset))
        coco_gt._detbench_faster = fast
    return fast


def bbox_eval(coco_gt: COCO, results: List[dict], cat_ids: Optional[Sequence[int]] = None,
              backend: Optional[str] = None) -> Tuple[object, str]:
    """COCOeval (bbox) of ``results`` on ``coco_gt`` after evaluate, accumulate and summarize.

    Returns the evaluator (``stats``, ``eval["precision"]`` and ``params`` as pycocotools'
    COCOeval has them) and the printed summary. ``results`` is not modified.
    """
    backend = eval_backend(backend)
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        ev = COCOeval(coco_gt, load_results(coco_gt, results), iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = sorted(cat_ids)
        with contextlib.redirect_stdout(io.StringIO()):  # per-image timing lines
            ev.evaluate()
            ev.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            ev.summarize()
        return ev, summary.getvalue()
    from faster_coco_eval import COCOeval_faster

    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:5]}")
    gt = _faster_ground_truth(coco_gt)
    lines: List[str] = []
    quiet = lines.append  # faster-coco-eval "prints" through this; the summary lines are kept
    dt = gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])
    ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a: None)
    if cat_ids is not None:
        ev.params.catIds = sorted(cat_ids)
    ev.evaluate()
    ev.accumulate()
    ev.print_function = quiet
    ev.summarize()
    # pycocotools' 12 summary lines (faster-coco-eval adds AR at IoU 0.5 and 0.75 after them)
    return ev, "".join(f"{line}\n" for line in [ln for ln in lines if str(ln).startswith(" Average")][:12])
