"""The data path: decoded images cached in memory under a size threshold, identical to a fresh decode;
the runtime's loader (workers, pinned memory only on CUDA)."""
import json

import numpy as np
import torch
from PIL import Image

from detectors.data.coco import CocoDetection
from detectors.config import TrialConfig
from detectors.data.resolve import PATH_KEYS
from detectors.train.runtime import LocalRuntime
from detectors.train.trial import make_trial


def write_set(tmp_path, n=3, h=4, w=5):
    images = []
    for i in range(1, n + 1):
        Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
    ann = {"images": images, "categories": [{"id": 1, "name": "c"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 3]}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    return str(tmp_path), str(tmp_path / "a.json")


def test_cached_images_are_the_decoded_images_and_files_are_read_once(tmp_path):
    ds = CocoDetection(*write_set(tmp_path))
    # 3 images of 4 x 5 px x 3 bytes = 180 bytes
    assert ds.decoded_mb * 2**20 == 180 and ds.caches_images
    first = ds[1][0]
    assert torch.equal(first, torch.full((3, 4, 5), 80 / 255.0))
    (tmp_path / "2.png").unlink()  # a cached image needs its file no more
    assert torch.equal(ds[1][0], first)
    first.add_(1.0)  # the caller's tensor is its own: the cache keeps the decoded pixels
    assert torch.equal(ds[1][0], torch.full((3, 4, 5), 80 / 255.0))


def test_over_the_threshold_nothing_is_kept_and_preload_fills_the_cache(tmp_path):
    images, ann = write_set(tmp_path)
    off = CocoDetection(images, ann, cache_mb=100 / 2**20)  # 180 bytes > 100
    off[0]
    assert not off.caches_images and off._cache == {}
    on = CocoDetection(images, ann)
    on.preload()
    assert sorted(on._cache) == [1, 2, 3] and on._cache[3].dtype == torch.uint8


def test_runtime_loader_workers_and_pinned_memory_only_on_cuda(tmp_path):
    ds = CocoDetection(*write_set(tmp_path))
    loader = LocalRuntime(torch.device("cpu"), loader_workers=2).train_loader(
        ds, 2, torch.Generator().manual_seed(0), lambda b: b)
    assert loader.num_workers == 2 and not loader.pin_memory
    assert len(ds._cache) == 3  # preloaded before the workers fork
    assert not LocalRuntime(torch.device("cpu")).non_blocking
    trial = make_trial({k: "/x" for k in PATH_KEYS}, "/tmp/unused")
    assert LocalRuntime.for_trial(TrialConfig.from_dict({**trial, "loader_workers": 1})).loader_workers == 1
