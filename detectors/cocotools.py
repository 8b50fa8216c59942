"""pycocotools plumbing, in one place: a ``COCO`` over a dict, ``loadRes`` that takes an empty list,
and the part of an annotation file that box evaluation reads.

Used by evaluation (``detectors.evaluate``), the dataset loader (its ``coco``
ground truth) and the driver side: the callback stores ``bbox_ground_truth`` of
the val file once per val set, and the pages' image bootstrap evaluates on it.
No torch here, so the report pages can import it cheaply.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import List

from pycocotools.coco import COCO

__all__ = ["coco_ground_truth", "load_results", "bbox_ground_truth", "BBOX_FIELDS"]

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
