"""A loader for any COCO-format detection dataset on disk (pycocotools underneath).

Everything that can be wrong with a dataset is checked once, at construction,
and reported as a one-line :class:`DatasetError` naming the file and the record,
so a bad annotation fails the trial at once instead of silently mistraining:

    instances_val.json: annotation 17: category_id 99 is not in categories

Conventions (docs/architecture.md): COCO xywh boxes are converted once, here,
to float ``[N, 4]`` xyxy absolute pixels; category ids (COCO's 1..90 with gaps,
or anything else) map to contiguous labels ``0..K-1`` in sorted id order.
``iscrowd=1`` boxes are never training targets; they stay in :attr:`coco`, the
ground truth for COCOeval, which knows how to ignore them.

Decoded images are kept in memory (uint8, 3 bytes a pixel) when the whole set
fits under ``cache_mb`` (default ``IMAGE_CACHE_MB``): every epoch after the
first, and every evaluation, then reads no file and decodes no PNG. Decoding
is deterministic, so a cached image is the image a fresh decode would give.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from detectors.boxes import clip_boxes, xywh_to_xyxy
from detectors.evaluation.cocotools import coco_ground_truth

__all__ = ["DatasetError", "CocoDetection", "collate", "IMAGE_CACHE_MB"]

# Decoded sets up to this size stay in memory: the default synthetic set (800 images of
# 128^2 px) is 39 MB; COCO val2017 (5000 images, ~4.6 GB decoded) is read from disk.
IMAGE_CACHE_MB = 512


class DatasetError(ValueError):
    """A dataset problem; the message is one line naming the file and the record."""


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset: one ``(image, target)`` pair per image.

    Args:
        images_dir: directory the images' ``file_name`` entries are relative to.
        annotations_file: COCO json with ``images``, ``annotations``, ``categories``.
        hflip_prob: probability of a horizontal flip per ``__getitem__``, drawn
            with ``torch.rand`` (torch's global RNG: checkpointing its state
            gives an exact resume; use with ``num_workers=0``).
        cache_mb: keep decoded images in memory when the set's decoded size
            (sum of height x width x 3 bytes) is at most this many MiB; 0 never.

    Attributes:
        image_ids: every image id (sorted), including images without annotations.
        cat_ids: original category ids, sorted; ``cat_ids[label]`` is label's id.
        cat_id_to_label: inverse of ``cat_ids``.
        class_names: category names, indexed by label.
        class_counts: training targets per label (non-crowd, after dropping degenerate boxes).
        coco: pycocotools ``COCO`` over the file's content, the ground truth for COCOeval.
    """

    def __init__(self, images_dir: str, annotations_file: str, hflip_prob: float = 0.0,
                 cache_mb: float = IMAGE_CACHE_MB) -> None:
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.images_dir = os.path.abspath(images_dir)
        self.annotations_file = os.path.abspath(annotations_file)
        self.hflip_prob = float(hflip_prob)
        self._name = os.path.basename(annotations_file)

        data = _read_json(self.annotations_file)
        images, categories, annotations = self._check_structure(data)
        self.cat_ids = sorted(categories)
        self.cat_id_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names = [str(categories[c].get("name", c)) for c in self.cat_ids]
        self.image_ids = sorted(images)
        self._files = {i: os.path.join(self.images_dir, images[i]["file_name"]) for i in self.image_ids}
        self._check_files_exist()
        self._sizes = {i: self._image_size(i, images[i]) for i in self.image_ids}
        self._targets = self._build_targets(annotations)
        self.class_counts = [0] * len(self.cat_ids)
        for t in self._targets.values():
            for label in t["labels"].tolist():
                self.class_counts[label] += 1
        self.coco = coco_ground_truth(data)
        self.decoded_mb = sum(h * w * 3 for h, w in self._sizes.values()) / 2**20
        self.caches_images = self.decoded_mb <= cache_mb
        self._cache: Dict[int, Tensor] = {}  # image id -> uint8 [3, H, W], filled as images are read

    # --- validation ---------------------------------------------------------

    def _err(self, record: str, message: str) -> DatasetError:
        return DatasetError(f"{self._name}: {record}: {message}")

    def _check_structure(self, data) -> Tuple[Dict[int, dict], Dict[int, dict], List[dict]]:
        """Images and categories by id, and the checked annotation list."""
        if not isinstance(data, dict):
            raise DatasetError(f"{self._name}: top level must be a JSON object, got {type(data).__name__}")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{self._name}: missing or invalid '{key}' list")
        # Test-set style files have no annotations at all; that is fine.
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DatasetError(f"{self._name}: 'annotations' must be a list")
        images = self._index(data["images"], "image", ("file_name",))
        categories = self._index(data["categories"], "category", ())
        if not categories:
            raise DatasetError(f"{self._name}: no categories")
        ann_ids = set()
        for n, ann in enumerate(annotations):
            self._check_annotation(n, ann, images, categories, ann_ids)
        return images, categories, annotations

    def _index(self, records: list, kind: str, required: Tuple[str, ...]) -> Dict[int, dict]:
        out: Dict[int, dict] = {}
        for n, rec in enumerate(records):
            rid = rec.get("id") if isinstance(rec, dict) else None
            if not _is_int(rid):
                raise self._err(f"{kind} #{n}", f"missing or non-integer id {rid!r}")
            if rid in out:
                raise self._err(f"{kind} {rid}", "duplicate id")
            for key in required:
                if key not in rec:
                    raise self._err(f"{kind} {rid}", f"missing '{key}'")
            out[rid] = rec
        return out

    def _check_annotation(self, n: int, ann, images: dict, categories: dict, seen: set) -> None:
        aid = ann.get("id") if isinstance(ann, dict) else None
        # COCOeval stores matched gt ids and treats 0 as "unmatched": an id of 0
        # would silently turn its true positive into a false positive.
        if not _is_int(aid) or aid < 1:
            raise self._err(f"annotation #{n}", f"id must be an integer >= 1, got {aid!r}")
        if aid in seen:
            raise self._err(f"annotation {aid}", "duplicate id")
        seen.add(aid)
        if ann.get("image_id") not in images:
            raise self._err(f"annotation {aid}", f"image_id {ann.get('image_id')!r} is not in images")
        if ann.get("category_id") not in categories:
            raise self._err(f"annotation {aid}", f"category_id {ann.get('category_id')!r} is not in categories")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            raise self._err(f"annotation {aid}", f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")

    def _check_files_exist(self) -> None:
        missing = [(i, p) for i, p in self._files.items() if not os.path.isfile(p)]
        if missing:
            i, path = missing[0]
            more = f" ({len(missing) - 1} more images missing)" if len(missing) > 1 else ""
            raise self._err(f"image {i}", f"file {path} does not exist{more}")

    def _image_size(self, image_id: int, rec: dict) -> Tuple[int, int]:
        """``(height, width)`` from the record, or from the file header when absent."""
        if _is_int(rec.get("width")) and _is_int(rec.get("height")):
            return int(rec["height"]), int(rec["width"])
        with Image.open(self._files[image_id]) as img:  # reads the header only
            return img.height, img.width

    # --- targets ------------------------------------------------------------

    def _build_targets(self, annotations: List[dict]) -> Dict[int, Dict[str, Tensor]]:
        """Per image, float32 ``[N, 4]`` xyxy boxes and int64 ``[N]`` labels (non-crowd only)."""
        per_image: Dict[int, List[dict]] = {i: [] for i in self.image_ids}
        for ann in annotations:
            if not ann.get("iscrowd", 0):
                per_image[ann["image_id"]].append(ann)
        targets, n_clipped, n_dropped = {}, 0, 0
        for image_id, anns in per_image.items():
            h, w = self._sizes[image_id]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
            boxes = xywh_to_xyxy(xywh)
            clipped = clip_boxes(boxes, h, w)
            keep = ((clipped[:, 2] - clipped[:, 0]) > 1) & ((clipped[:, 3] - clipped[:, 1]) > 1)
            n_dropped += int((~keep).sum())
            n_clipped += int(((clipped != boxes).any(dim=1) & keep).sum())
            labels = [self.cat_id_to_label[a["category_id"]] for a in anns]
            targets[image_id] = {"boxes": clipped[keep].to(torch.float32),
                                 "labels": torch.tensor(labels, dtype=torch.int64)[keep]}
        if n_clipped or n_dropped:
            warnings.warn(f"{self._name}: clipped {n_clipped} boxes, dropped {n_dropped} degenerate boxes "
                          "(w or h <= 1 px after clipping to the image)", stacklevel=3)
        return targets

    # --- Dataset API ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, object]]:
        """Returns ``image`` float32 ``[3, H, W]`` in [0, 1] (RGB) and ``target``:
        ``boxes`` float32 ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]``, ``image_id`` int."""
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        t = self._targets[image_id]
        boxes, labels = t["boxes"].clone(), t["labels"].clone()
        # Only draw from the RNG when flips are on, so hflip_prob=0 leaves torch's stream untouched.
        if self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
        return image, {"boxes": boxes, "labels": labels, "image_id": image_id}

    def target(self, image_id: int) -> Dict[str, Tensor]:
        """The image's training target (``boxes``, ``labels``; copies), never flipped."""
        t = self._targets[image_id]
        return {"boxes": t["boxes"].clone(), "labels": t["labels"].clone()}

    def load_image(self, image_id: int) -> Tensor:
        """float32 ``[3, H, W]`` in [0, 1]; grayscale, palette and RGBA become RGB."""
        pixels = self._cache.get(image_id)
        if pixels is None:
            pixels = self._decode(image_id)
            if self.caches_images:
                self._cache[image_id] = pixels
        return pixels.to(torch.float32).div_(255.0)

    def preload(self) -> None:
        """Decode every image now (when the set is cached at all): DataLoader worker processes
        forked afterwards share the decoded images instead of each decoding its own."""
        if self.caches_images:
            for image_id in self.image_ids:
                if image_id not in self._cache:
                    self._cache[image_id] = self._decode(image_id)

    def _decode(self, image_id: int) -> Tensor:
        """uint8 ``[3, H, W]`` RGB, checked against the record's size."""
        path = self._files[image_id]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except OSError as e:
            raise self._err(f"image {image_id}", f"cannot read {path}: {e}") from None
        if (rgb.height, rgb.width) != self._sizes[image_id]:
            h, w = self._sizes[image_id]
            raise self._err(f"image {image_id}", f"{path} is {rgb.width}x{rgb.height} but the record says {w}x{h}")
        array = np.array(rgb, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def collate(batch: List[Tuple[Tensor, dict]]) -> Tuple[List[Tensor], List[dict]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``; images keep their own sizes."""
    images = [img for img, _ in batch]
    targets = [t for _, t in batch]
    return images, targets


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot read annotations: {e}") from None
