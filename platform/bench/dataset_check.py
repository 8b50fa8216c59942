"""``python -m platform.bench --dataset-check``: the driver's COCO check on a COCO-train2017-sized file.

Generates (once per run, in a temporary directory) an annotation file of
118,287 images and 860,001 boxes (train2017's counts) in 80 categories, and an
images directory with one empty file per image, then times
``platform.study.datasets.check_coco`` the first time (parse + check + verdict
written) and again (the remembered verdict). Issue 21's targets: at most 20 s
and 1 s. Prints the times and the machine's load; asserts nothing.

The file has no segmentation polygons (the check reads none), so it is ~110 MB
against the real file's 450 MB: parsing is most of the first check, so the real
file's first check takes longer by roughly the extra parse. The cached check
does not depend on the file's size.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Dict

import numpy as np

IMAGES, BOXES, CATEGORIES = 118_287, 860_001, 80


def write_coco(root: str, images: int = IMAGES, boxes: int = BOXES, seed: int = 0) -> Dict[str, float]:
    """``root/instances.json`` and ``root/images/`` with ``images`` empty files; returns the seconds each took."""
    rng = np.random.default_rng(seed)
    wh = rng.integers(200, 641, size=(images, 2))
    owner = rng.integers(0, images, size=boxes)
    size = wh[owner]
    w = np.round(rng.uniform(0.05, 0.5, boxes) * size[:, 0], 2)
    h = np.round(rng.uniform(0.05, 0.5, boxes) * size[:, 1], 2)
    x = np.round(rng.uniform(0, 1, boxes) * (size[:, 0] - w), 2)
    y = np.round(rng.uniform(0, 1, boxes) * (size[:, 1] - h), 2)
    cats = rng.integers(1, CATEGORIES + 1, size=boxes)
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(a), "height": int(b)}
                   for i, (a, b) in enumerate(wh.tolist())],
        "categories": [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, CATEGORIES + 1)],
        "annotations": [{"id": j + 1, "image_id": int(o) + 1, "category_id": int(c), "bbox": [bx, by, bw, bh],
                         "area": round(bw * bh, 2), "iscrowd": 0}
                        for j, (o, c, bx, by, bw, bh) in enumerate(zip(owner.tolist(), cats.tolist(), x.tolist(),
                                                                        y.tolist(), w.tolist(), h.tolist()))]}
    t0 = time.perf_counter()
    with open(os.path.join(root, "instances.json"), "w") as f:
        json.dump(coco, f)
    t1 = time.perf_counter()
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir)
    for image in coco["images"]:  # os.open / close: no Python file object per image
        os.close(os.open(os.path.join(images_dir, image["file_name"]), os.O_CREAT | os.O_WRONLY, 0o644))
    return {"write_json_s": t1 - t0, "create_image_files_s": time.perf_counter() - t1}


def bench_dataset_check() -> Dict[str, float]:
    from platform.study.datasets import check_coco

    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as root:
        out = write_coco(root)
        ann, images = os.path.join(root, "instances.json"), os.path.join(root, "images")
        out["file_mb"] = os.path.getsize(ann) / 2**20
        t0 = time.perf_counter()
        counts = check_coco(ann, images, os.path.join(root, "cache"))
        out["first_check_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = check_coco(ann, images, os.path.join(root, "cache"))
        out["cached_check_s"] = time.perf_counter() - t0
    out["load_before"], out["load_after"] = load[0], os.getloadavg()[0]
    print(f"dataset check: {counts['images']} images, {counts['annotations']} boxes, {out['file_mb']:.0f} MB "
          f"(written in {out['write_json_s']:.1f} s; {IMAGES} empty image files created in "
          f"{out['create_image_files_s']:.1f} s)")
    print(f"  first check: {out['first_check_s']:.2f} s (target <= 20 s)")
    hit = "from the remembered verdict" if again is None else "NOT from the remembered verdict"
    print(f"  cached check: {out['cached_check_s'] * 1000:.1f} ms (target <= 1 s; {hit})")
    print(f"  load average: {out['load_before']:.2f} before, {out['load_after']:.2f} after ({os.cpu_count()} CPUs)")
    return out
