"""An embedded, generated detection dataset in COCO format, deterministic from a seed.

Each image is a noisy, textured background with a few coloured shapes (the
classes: the *shape* is the class, colours are random per object) and a few
distractor strokes that belong to no class (hard negatives). Boxes are the
tight box of the drawn shape, float xyxy pixels, stored as COCO xywh.

    paths = generate({"num_train": 64, "seed": 1}, "runs/datasets")
    paths["train_images"], paths["train_annotations"], ...   # absolute paths

The set is written once into ``<cache_root>/synthetic-<sha>/`` (``sha`` over the
canonical JSON of the full parameters plus ``GENERATOR_VERSION``) and reused.
It is built in a temporary directory beside the final one and renamed into
place, so concurrent generators (several Ray workers, or the driver and a
worker) never see a half-written set.

Defaults are tuned so a tiny CPU RetinaNet learns in a couple of minutes while
the usual detection difficulties are present: many small objects (sizes are
log-uniform, so about half are COCO "small", area < 32^2), a long-tailed class
distribution (Zipf exponent ``class_skew``), background clutter, distractors,
blurred edges and mild overlaps.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detectors.registry import Interval

__all__ = ["DEFAULTS", "RANGES", "SHAPES", "GENERATOR_VERSION", "generate", "dataset_dir_name", "resolve_params"]

# Bump whenever the drawing code changes what a given parameter set produces,
# so cached sets from an older generator are not silently reused.
GENERATOR_VERSION = 1

DEFAULTS: Dict[str, object] = {
    "seed": 0,
    "num_train": 600,
    "num_val": 100,
    "image_size": 128,            # square images, pixels
    "num_classes": 5,             # the first ``num_classes`` entries of SHAPES
    "objects_per_image": [1, 5],  # inclusive range, uniform
    "object_size": [10, 56],      # longer box side in px, log-uniform in the range
    "class_skew": 1.0,            # p(class k) ~ 1 / (k + 1) ** class_skew; 1.0 and 5 classes: 5x head/tail
    "clutter": 0.5,               # background texture + pixel noise strength, 0 = flat background
    "distractors": [0, 3],        # inclusive range of no-class strokes per image
    "blur": 0.6,                  # Gaussian blur radius (sigma, px) applied to shapes' edges
    "min_visible": 0.6,           # an object stays >= this fraction visible after later objects
}

SHAPES: List[str] = ["square", "circle", "triangle", "cross", "ring", "diamond", "star", "crescent"]

_SPLITS = ("train", "val")
_MARKER = "COMPLETE"
_PLACE_TRIES = 20          # placement attempts per object before it is skipped
_MIN_CONTRAST = 0.35       # mean |rgb difference| between an object and the background base colour


# The range of every setting. Upper ends are generous; they turn a typo (an image
# side of 10^6, 10^5 strokes per image) into an error here, before anything is
# generated, rather than an allocation or an hour-long loop in a worker. At least
# one train and one val image: the speed figures and COCO eval need a val image.
RANGES: Dict[str, Interval] = {
    "seed": Interval(ge=0, le=2**32 - 1),
    "num_train": Interval(ge=1, le=1_000_000),
    "num_val": Interval(ge=1, le=1_000_000),
    "image_size": Interval(ge=16, le=4096),
    "num_classes": Interval(ge=1, le=len(SHAPES)),
    "objects_per_image": Interval(ge=0, le=100),   # each end; the max must be >= 1
    "object_size": Interval(ge=4, le=4096),        # each end; the max must be <= image_size
    "class_skew": Interval(ge=0, le=10),           # 8 classes at 10: the tail is 1e-9 of the head
    "clutter": Interval(ge=0, le=10),
    "distractors": Interval(ge=0, le=100),         # each end
    "blur": Interval(ge=0, le=100),
    "min_visible": Interval(ge=0, le=1),
}


def resolve_params(params: Optional[dict]) -> dict:
    """Merge ``params`` over DEFAULTS and validate against ``RANGES``; raises ValueError naming the bad key."""
    params = dict(params or {})
    for key in params:
        if key not in DEFAULTS:
            raise ValueError(f"synthetic: unknown parameter '{key}' (known: {', '.join(sorted(DEFAULTS))})")
    p = {**DEFAULTS, **params}
    for key, default in DEFAULTS.items():
        r = RANGES[key]
        if isinstance(default, list):
            p[key] = _int_range(key, p[key], int(r.ge), int(r.le))
        elif isinstance(default, int):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or not r.ge <= v <= r.le:
                raise ValueError(f"synthetic: '{key}' must be in {r.ge}..{r.le}, got {v!r}")
        else:
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not r.ge <= v <= r.le:  # NaN fails too
                raise ValueError(f"synthetic: '{key}' must be a number in [{r.ge}, {r.le}], got {v!r}")
            p[key] = float(v)
    if p["objects_per_image"][1] < 1:
        raise ValueError(f"synthetic: 'objects_per_image' max must be >= 1 (no image would hold an object), "
                         f"got {p['objects_per_image']}")
    if p["object_size"][1] > p["image_size"]:
        raise ValueError(f"synthetic: 'object_size' max {p['object_size'][1]} exceeds image_size {p['image_size']}")
    return p


def _int_range(key: str, value, lo: int, hi: int) -> List[int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not lo <= value[0] <= value[1] <= hi:
        raise ValueError(f"synthetic: '{key}' must be [min, max] integers with {lo} <= min <= max <= {hi}, "
                         f"got {value!r}")
    return [int(value[0]), int(value[1])]


def dataset_dir_name(params: Optional[dict]) -> str:
    """``synthetic-<12 hex>``: the cache directory name for these (merged) parameters."""
    p = resolve_params(params)
    canonical = json.dumps({"params": p, "version": GENERATOR_VERSION}, sort_keys=True, separators=(",", ":"))
    return "synthetic-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def generate(params: Optional[dict], cache_root: str) -> Dict[str, str]:
    """Generate (or find cached) the synthetic set; returns absolute paths.

    Args:
        params: generator parameters, merged over DEFAULTS; unknown keys raise ValueError.
        cache_root: directory that holds ``synthetic-<sha>/`` sets (created if missing).
    Returns:
        ``{"train_images", "train_annotations", "val_images", "val_annotations", "root"}``,
        absolute paths; images dirs hold ``000001.png``...; annotations are COCO json.
    """
    p = resolve_params(params)
    cache_root = os.path.abspath(cache_root)
    root = os.path.join(cache_root, dataset_dir_name(p))
    paths = _paths(root)
    if os.path.exists(os.path.join(root, _MARKER)):
        return paths
    if os.path.exists(root):
        # Only complete sets are ever renamed into place, so this is not ours.
        raise RuntimeError(f"synthetic: {root} exists but has no {_MARKER} marker; remove it and retry")
    os.makedirs(cache_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=cache_root)
    try:
        for split_index, split in enumerate(_SPLITS):
            _write_split(p, split, split_index, tmp)
        with open(os.path.join(tmp, _MARKER), "w") as f:  # written last: the set is complete
            f.write(_dumps({"params": p, "version": GENERATOR_VERSION}))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); the cache is shared
        try:
            os.rename(tmp, root)
        except OSError:
            # Lost the race: another process renamed its (identical) set first.
            if not os.path.exists(os.path.join(root, _MARKER)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return paths


def _paths(root: str) -> Dict[str, str]:
    out = {"root": root}
    for split in _SPLITS:
        out[f"{split}_images"] = os.path.join(root, split)
        out[f"{split}_annotations"] = os.path.join(root, f"instances_{split}.json")
    return out


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _write_split(p: dict, split: str, split_index: int, out_dir: str) -> None:
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir)
    n = p[f"num_{split}"]
    images, annotations = [], []
    for i in range(n):
        # One independent stream per (seed, split, image): train and val never share
        # draws, and an image does not change when the split size changes.
        rng = np.random.default_rng([p["seed"], split_index, i])
        image, objects = render_image(p, rng)
        image_id = i + 1
        file_name = f"{image_id:06d}.png"
        # Fixed PNG options and no metadata: identical params give identical bytes.
        image.save(os.path.join(img_dir, file_name), format="PNG", compress_level=6)
        images.append({"id": image_id, "file_name": file_name, "width": p["image_size"], "height": p["image_size"]})
        for label, (x1, y1, x2, y2) in objects:
            w, h = x2 - x1, y2 - y1
            # area is the box area (not the mask area as in real COCO), so COCOeval's
            # small/medium/large split treats ground truth and detections alike.
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": k + 1, "name": SHAPES[k], "supercategory": "shape"} for k in range(p["num_classes"])]
    data = {"info": {"description": "detbench synthetic shapes", "split": split, "params": p,
                     "generator_version": GENERATOR_VERSION},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    with open(os.path.join(out_dir, f"instances_{split}.json"), "w") as f:
        f.write(_dumps(data))


def render_image(p: dict, rng: np.random.Generator) -> Tuple[Image.Image, List[Tuple[int, Tuple[float, ...]]]]:
    """Draw one image. Returns the RGB image and ``[(label, (x1, y1, x2, y2)), ...]`` float xyxy."""
    size = p["image_size"]
    base = rng.random(3)
    canvas = _background(p, rng, base)
    for _ in range(int(rng.integers(p["distractors"][0], p["distractors"][1] + 1))):
        _draw_distractor(canvas, rng, size)

    owner = np.full((size, size), -1, dtype=np.int16)  # which object owns each pixel (-1: none)
    areas: List[int] = []
    objects = []
    probs = 1.0 / np.arange(1, p["num_classes"] + 1) ** p["class_skew"]
    probs /= probs.sum()
    for _ in range(int(rng.integers(p["objects_per_image"][0], p["objects_per_image"][1] + 1))):
        label = int(rng.choice(p["num_classes"], p=probs))
        mask = _place(p, rng, label, owner, areas)
        if mask is None:
            continue
        k = len(areas)
        owner[mask] = k
        areas.append(int(mask.sum()))
        canvas[mask] = _contrasting_colour(rng, base)
        ys, xs = np.nonzero(mask)
        # Pixel-edge coordinates: a shape covering columns 3..7 spans x in [3, 8).
        objects.append((label, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))

    image = Image.fromarray(np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8))
    if p["blur"] > 0:
        image = image.filter(ImageFilter.GaussianBlur(p["blur"]))
    if p["clutter"] > 0:
        # Pixel noise after the blur, so edges are soft but the texture stays sharp.
        noise = rng.normal(0.0, 12.0 * p["clutter"], (size, size, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise + 0.5, 0, 255).astype(np.uint8))
    return image, objects


def _background(p: dict, rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """float ``[S, S, 3]`` in [0, 1]: a base colour plus low-frequency colour blotches."""
    size = p["image_size"]
    coarse = rng.random((6, 6, 3))
    blotches = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                          dtype=np.float64) / 255.0
    return np.clip(base + 0.5 * p["clutter"] * (blotches - 0.5), 0.0, 1.0)


def _contrasting_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    # A random colour far enough from the background base, so no object is invisible.
    colour = rng.random(3)
    for _ in range(10):
        if np.abs(colour - base).mean() >= _MIN_CONTRAST:
            break
        colour = rng.random(3)
    else:
        colour = np.where(base > 0.5, 0.0, 1.0)
    return colour


def _place(p: dict, rng: np.random.Generator, label: int, owner: np.ndarray, areas: List[int]) -> Optional[np.ndarray]:
    """A boolean ``[S, S]`` mask for a new shape that leaves every earlier object visible enough."""
    size = p["image_size"]
    lo, hi = p["object_size"]
    for _ in range(_PLACE_TRIES):
        long_side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.exp(rng.uniform(math.log(2 / 3), math.log(3 / 2)))  # w / h
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        w, h = max(w, 4.0), max(h, 4.0)
        x0 = rng.uniform(0, size - w)
        y0 = rng.uniform(0, size - h)
        mask = _shape_mask(SHAPES[label], size, x0, y0, w, h)
        if not mask.any():
            continue
        covered = owner[mask]
        counts = np.bincount(covered[covered >= 0], minlength=len(areas))
        # Each earlier object keeps its pixels except those this shape covers.
        visible = [(areas[k] - counts[k]) / areas[k] for k in range(len(areas))]
        if all(v >= p["min_visible"] for v in visible):
            return mask
    return None


def _shape_mask(shape: str, size: int, x0: float, y0: float, w: float, h: float) -> np.ndarray:
    """Boolean ``[size, size]`` mask of ``shape`` inscribed in the box ``(x0, y0, w, h)``."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    x1, y1 = x0 + w - 1, y0 + h - 1
    cx, cy = x0 + (w - 1) / 2, y0 + (h - 1) / 2
    if shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "cross":
        tw, th = max(2.0, 0.3 * w), max(2.0, 0.3 * h)
        d.rectangle([cx - tw / 2, y0, cx + tw / 2, y1], fill=255)
        d.rectangle([x0, cy - th / 2, x1, cy + th / 2], fill=255)
    elif shape == "ring":
        d.ellipse([x0, y0, x1, y1], fill=255)
        d.ellipse([x0 + 0.27 * w, y0 + 0.27 * h, x1 - 0.27 * w, y1 - 0.27 * h], fill=0)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        pts = []
        for j in range(10):
            r = 1.0 if j % 2 == 0 else 0.45
            a = -math.pi / 2 + j * math.pi / 5
            pts.append((cx + r * (w - 1) / 2 * math.cos(a), cy + r * (h - 1) / 2 * math.sin(a)))
        d.polygon(pts, fill=255)
    elif shape == "crescent":
        d.ellipse([x0, y0, x1, y1], fill=255)
        d.ellipse([x0 + 0.35 * w, y0 - 0.05 * h, x1 + 0.35 * w, y1 - 0.05 * h], fill=0)
    else:  # pragma: no cover - SHAPES and this function change together
        raise ValueError(f"unknown shape '{shape}'")
    return np.asarray(img) > 0


def _draw_distractor(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """A stroke of no class: a line, zigzag or open arc, drawn straight onto ``canvas``."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    kind = int(rng.integers(3))
    width = int(rng.integers(1, 4))
    if kind == 0:
        d.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=255, width=width)
    elif kind == 1:
        start = rng.uniform(0, size, 2)
        pts = [tuple(start + rng.uniform(-20, 20, 2) * j) for j in range(int(rng.integers(3, 6)))]
        d.line(pts, fill=255, width=width)
    else:
        r = rng.uniform(8, 30)
        cx, cy = rng.uniform(0, size, 2)
        a0 = rng.uniform(0, 360)
        d.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + rng.uniform(60, 200), fill=255, width=width)
    canvas[np.asarray(img) > 0] = rng.random(3)
