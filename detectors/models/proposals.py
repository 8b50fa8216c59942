"""Selective-search region proposals (Uijlings et al., IJCV 2013), computed once per image and cached on disk.

    source = SelectiveSearch(max_proposals=2000)        # "fast" mode, as R-CNN (sec. 2.1) and Fast R-CNN
    source.attach(train_ds)                             # load, or compute and store, every image's proposals
    proposals = source(images)                          # list of float [N_i, 4] xyxy, each image's pixels

The segmentation is opencv-contrib's ``cv2.ximgproc.segmentation`` (its fast
mode: HSV and Lab colour spaces, Felzenszwalb's graph segmentation at
``base_k`` / ``base_k + inc_k``, colour+fill and size+fill similarities). It runs on
the CPU, outside torch, at a fraction of a second per small image, so a trial
computes each image's proposals once and every later trial reuses them.

The cache: one ``.npy`` per image under ``<annotation file's folder>/proposals/``,
named by a hash of (the image's pixels as selective search sees them, OpenCV's
version, the segmentation settings): what decides the boxes, and nothing else.
So a dataset renumbered, renamed or re-encoded losslessly (another annotation
file beside the same folder, or a copy that brings its ``proposals/``) finds its
proposals, while a changed pixel or another OpenCV computes them afresh.
Proposals are stored in full, in selective search's own ranking, and truncated
to ``max_proposals`` when read, so detectors that keep different numbers share
one cache. Files are written to a temporary name and renamed: concurrent trials
never read half a file.

Inside a detector, images arrive as tensors without their ids. ``attach``
therefore indexes the cached proposals by the same digest of the image's pixels.
A horizontally flipped image (``CocoDetection``'s ``hflip_prob``) is found by
its mirror and gets the cached boxes flipped, ``x1' = W - x2, x2' = W - x1``, in
the same ranking (py-faster-rcnn flips its roidb's proposals the same way),
rather than a segmentation of its own. Any other image not seen (augmented, or
from elsewhere) has its proposals computed on the spot, and so does every image
inside :meth:`SelectiveSearch.uncached` (honest timing).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import tempfile
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["selective_search", "pixel_digest", "hflip_boxes", "cache_key", "SelectiveSearch"]

# Bump when the computation changes what given settings produce, so stale caches are not reused.
# 2: the pseudo-random ranking is seeded per image (``_seed_ranking``).
# 3: files keyed by the image's pixels and OpenCV's version, no longer by annotation file and image id.
SEGMENTATION_VERSION = 3
_LIBC = None


def _seed_ranking(seed: int = 0) -> None:
    """Selective search ranks its regions by hierarchy level times a pseudo-random number (the
    paper's ranking); OpenCV draws it with the C library's ``rand()``, whose state is the whole
    process's. Seeding it before each image makes an image's ranking (and so which proposals
    ``max_proposals`` keeps, and the order a sampler sees) the same whatever the process
    segmented before: a trial that computes the proposals and one that reads them agree."""
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL(None)
        _LIBC.srand(seed)
    except (OSError, AttributeError):  # no C library handle (not POSIX): the order may vary by process
        pass


def selective_search(image: Tensor, *, mode: str = "fast", base_k: int = 150, inc_k: int = 150,
                     sigma: float = 0.8, min_size: float = 2.0) -> Tensor:
    """Proposals of one image, in selective search's ranking (best first).

    Args:
        image: float ``[3, H, W]`` RGB in ``[0, 1]``.
        mode: ``"fast"`` (R-CNN's setting) or ``"quality"`` (more strategies, ~4x slower).
        base_k, inc_k, sigma: Felzenszwalb segmentation parameters (opencv's defaults).
        min_size: boxes with a side below this many pixels are dropped.
    Returns:
        float32 ``[N, 4]`` xyxy pixels (pixel-edge coordinates: a box covering
        columns 3..7 spans x in [3, 8)), duplicates removed; the same boxes in the
        same order on every call for the same image.
    """
    import cv2  # opencv-contrib-python(-headless); imported here so the rest of detectors never needs it

    cv2.setNumThreads(max(1, torch.get_num_threads()))
    bgr = _pixels(image).permute(1, 2, 0).numpy()[:, :, ::-1]
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(bgr))
    if mode == "fast":
        ss.switchToSelectiveSearchFast(base_k, inc_k, sigma)
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality(base_k, inc_k, sigma)
    else:
        raise ValueError(f"unknown selective search mode '{mode}' (known: fast, quality)")
    _seed_ranking()
    rects = ss.process().reshape(-1, 4).astype(np.float32)  # x, y, w, h
    keep = (rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)
    rects = rects[keep]
    # Different segmentations often yield the same rectangle; keep its first (best-ranked) copy.
    _, first = np.unique(rects, axis=0, return_index=True)
    rects = rects[np.sort(first)]
    boxes = torch.from_numpy(rects.copy())
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _pixels(image: Tensor) -> Tensor:
    """uint8 ``[3, H, W]`` on the CPU: the pixels selective search segments (a dataset's
    ``uint8 / 255`` image comes back to its own bytes)."""
    return (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def pixel_digest(image: Tensor) -> str:
    """A digest of what selective search sees of ``image`` (float ``[3, H, W]`` in [0, 1]): its
    size and uint8 pixels. Two images with one digest get the same proposals."""
    pixels = _pixels(image).contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(list(pixels.shape)).encode())
    h.update(pixels.numpy().tobytes())
    return h.hexdigest()


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """xyxy ``[N, 4]`` boxes of an image ``width`` px wide, as boxes of its mirror image:
    ``x1' = W - x2``, ``x2' = W - x1`` (pixel edges: columns 3..7, ``[3, 8)``, become
    columns ``W-8..W-4``, ``[W-8, W-3)``); the same formula as ``CocoDetection``'s flip."""
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)


def opencv_version() -> str:
    """Part of the cache key: another OpenCV build may segment the same pixels differently."""
    import cv2

    return str(cv2.__version__)


def cache_key(pixels: str, settings: Dict, opencv: str) -> str:
    """The cache file name of one image's proposals: a hash of (``pixel_digest``, settings, OpenCV's version)."""
    text = json.dumps({"pixels": pixels, "settings": settings, "opencv": opencv}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SelectiveSearch:
    """A proposal source for detectors that take precomputed proposals (R-CNN, Fast R-CNN).

    Not an ``nn.Module``: it holds no weights, only settings, the in-memory index
    of attached datasets and two counters, ``computed`` and ``loaded`` (images whose
    proposals were segmented here / read from the disk cache).

    Args:
        max_proposals: proposals kept per image (best-ranked first); R-CNN and Fast R-CNN use ~2000.
        mode, base_k, inc_k, sigma, min_size: see :func:`selective_search`.
    """

    def __init__(self, max_proposals: int = 2000, mode: str = "fast", base_k: int = 150, inc_k: int = 150,
                 sigma: float = 0.8, min_size: float = 2.0) -> None:
        self.max_proposals = int(max_proposals)
        self.settings = {"mode": mode, "base_k": int(base_k), "inc_k": int(inc_k), "sigma": float(sigma),
                         "min_size": float(min_size), "version": SEGMENTATION_VERSION}
        self.computed = 0
        self.loaded = 0
        self._index: Dict[str, Tensor] = {}
        self._cached = True

    def compute(self, image: Tensor) -> Tensor:
        self.computed += 1
        s = self.settings
        return selective_search(image, mode=s["mode"], base_k=s["base_k"], inc_k=s["inc_k"], sigma=s["sigma"],
                                min_size=s["min_size"])

    def attach(self, dataset, cache_dir: Optional[str] = None) -> None:
        """Make every image of ``dataset`` (a ``CocoDetection``) known: read its proposals from the
        cache, or compute and store them. ``cache_dir`` defaults to ``proposals/`` beside the
        annotation file."""
        cache_dir = cache_dir or os.path.join(os.path.dirname(dataset.annotations_file), "proposals")
        opencv = opencv_version()
        os.makedirs(cache_dir, exist_ok=True)
        for image_id in dataset.image_ids:
            image = dataset.load_image(image_id)
            digest = pixel_digest(image)
            path = os.path.join(cache_dir, cache_key(digest, self.settings, opencv) + ".npy")
            if os.path.exists(path):
                boxes = torch.from_numpy(np.load(path))
                self.loaded += 1
            else:
                boxes = self.compute(image)
                _save_atomic(path, boxes.numpy())
            self._index[digest] = boxes

    def __call__(self, images: List[Tensor]) -> List[Tensor]:
        """float32 ``[N_i, 4]`` xyxy proposals (at most ``max_proposals``) of each image, on its device."""
        out = []
        for image in images:
            boxes = self._lookup(image) if self._cached else None
            if boxes is None:
                boxes = self.compute(image)
            out.append(boxes[: self.max_proposals].to(image.device))
        return out

    def _lookup(self, image: Tensor) -> Optional[Tensor]:
        """The attached proposals of ``image``, or of its mirror image flipped; None if neither."""
        boxes = self._index.get(pixel_digest(image))
        if boxes is None:
            mirrored = self._index.get(pixel_digest(image.flip(-1)))
            if mirrored is not None:
                boxes = hflip_boxes(mirrored, image.shape[-1])
        return boxes

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Within this block every call segments its images afresh (the proposal time a user pays)."""
        self._cached = False
        try:
            yield
        finally:
            self._cached = True


def _save_atomic(path: str, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
