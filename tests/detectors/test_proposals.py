"""The selective-search cache: keyed by the pixels and OpenCV's version, not by file, id or annotation
file; a horizontally flipped image gets the cached boxes flipped instead of a segmentation of its own."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectors.data.coco import CocoDetection
from detectors.data.synthetic import generate
from detectors.models import proposals as proposals_module
from detectors.models.proposals import SelectiveSearch, hflip_boxes
from detectors.train import trial as trial_defaults
from detectors.train.run import run_trial


@pytest.fixture
def data(tmp_path):
    """3 train images of 128 px (no val image needed)."""
    return generate({"num_train": 3, "num_val": 1, "seed": 11}, str(tmp_path / "data"))


@pytest.fixture
def calls(monkeypatch):
    """Every selective-search segmentation appends to this list."""
    made = []
    real = proposals_module.selective_search
    monkeypatch.setattr(proposals_module, "selective_search", lambda *a, **k: made.append(1) or real(*a, **k))
    return made


def copy_split(data, name, edit=None, first_id=100):
    """The train images re-encoded (uncompressed PNG) as ``<name>/img_<id>.png`` under new ids
    ``first_id, first_id + 1, ...``, with an annotation file ``instances_<name>.json`` beside the
    original ones; ``edit(index, pixels)`` may change an image's uint8 ``[H, W, 3]`` pixels first."""
    root = data["root"]
    source = json.load(open(data["train_annotations"]))
    os.makedirs(os.path.join(root, name))
    images = []
    for n, record in enumerate(source["images"]):
        pixels = np.array(Image.open(os.path.join(data["train_images"], record["file_name"])).convert("RGB"))
        if edit:
            edit(n, pixels)
        file_name = f"img_{first_id + n}.png"
        Image.fromarray(pixels).save(os.path.join(root, name, file_name), format="PNG", compress_level=0)
        images.append({**record, "id": first_id + n, "file_name": file_name})
    annotations = os.path.join(root, f"instances_{name}.json")
    with open(annotations, "w") as f:
        json.dump({"images": images, "annotations": [], "categories": source["categories"]}, f)
    return CocoDetection(os.path.join(root, name), annotations)


def test_the_same_pixels_under_other_names_and_ids_hit_the_cache(data, calls):
    original = CocoDetection(data["train_images"], data["train_annotations"])
    first = SelectiveSearch()
    first.attach(original)
    assert len(calls) == 3 and first.loaded == 0
    copy = copy_split(data, "copy")
    # another file, another id, another annotation file, other bytes: the same pixels
    old_file = os.path.join(data["train_images"], "000001.png")
    assert open(os.path.join(copy.images_dir, "img_100.png"), "rb").read() != open(old_file, "rb").read()
    second = SelectiveSearch()
    second.attach(copy)
    assert len(calls) == 3 and second.loaded == 3  # all three read from the cache, none segmented
    for image_id, copy_id in zip(original.image_ids, copy.image_ids):
        assert torch.equal(second([copy.load_image(copy_id)])[0], first([original.load_image(image_id)])[0])
    assert len(calls) == 3


def test_a_changed_pixel_or_another_opencv_misses_the_cache(data, calls, monkeypatch):
    original = CocoDetection(data["train_images"], data["train_annotations"])
    SelectiveSearch().attach(original)
    assert len(calls) == 3

    def one_pixel(n, pixels):
        if n == 1:  # the second image: one channel of one pixel one step brighter or darker
            pixels[5, 7, 0] = pixels[5, 7, 0] ^ 1

    source = SelectiveSearch()
    source.attach(copy_split(data, "edited", one_pixel))
    assert len(calls) == 4 and source.loaded == 2  # images 1 and 3 hit, image 2 is segmented afresh
    monkeypatch.setattr(cv2, "__version__", "0.0.0-another")
    other = SelectiveSearch()
    other.attach(original)
    assert len(calls) == 7 and other.loaded == 0  # the same images under another OpenCV: all segmented


def test_hflip_boxes_by_hand():
    # a 10 px wide image; columns 3..7 ([3, 8)) mirror to columns 2..6: x1' = 10 - 8 = 2, x2' = 10 - 3 = 7
    boxes = torch.tensor([[3.0, 1, 8, 4], [0, 0, 10, 2]])
    assert hflip_boxes(boxes, 10).tolist() == [[2.0, 1, 7, 4], [0, 0, 10, 2]]
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, 10), 10), boxes)


def test_a_flipped_image_gets_the_cached_boxes_flipped_without_a_segmentation(data, calls):
    plain = CocoDetection(data["train_images"], data["train_annotations"])
    flipping = CocoDetection(data["train_images"], data["train_annotations"], hflip_prob=1.0)
    source = SelectiveSearch(max_proposals=10)
    source.attach(plain)
    assert len(calls) == 3
    for index, image_id in enumerate(plain.image_ids):
        cached = source([plain.load_image(image_id)])[0]
        flipped, _ = flipping[index]
        assert torch.equal(flipped, plain.load_image(image_id).flip(-1))
        boxes = source([flipped])[0]
        # x1' = 128 - x2, x2' = 128 - x1, in the same ranking (so the same 10 are kept)
        mirrored = torch.stack((128 - cached[:, 2], cached[:, 1], 128 - cached[:, 0], cached[:, 3]), dim=1)
        assert len(cached) == 10 and torch.equal(boxes, mirrored)
    assert len(calls) == 3  # no flipped image was segmented
    with source.uncached():  # timing still segments every image, flipped or not
        source([flipped])
    assert len(calls) == 4


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_a_trial_on_flipped_images_segments_each_image_once_and_repeats_itself(data, calls, tmp_path, name):
    def trial(folder):
        return trial_defaults.make_trial(
            data, str(tmp_path / folder), detector={"name": name, "params": {}},
            loss={"name": "softmax_ce", "params": {}}, evaluation={"speed": {"enabled": False}},
            train={"epochs": 1, "batch_size": 2, "warmup_iters": 1, "eval_every_epoch": False, "hflip_prob": 1.0})

    def losses_and_ap(folder):
        reports = []
        final = run_trial(trial(folder), lambda metrics, checkpoint: reports.append(metrics))
        return reports[0]["train/loss"], final["AP"]

    first = losses_and_ap("a")
    assert len(calls) == 4  # 3 train + 1 val images when attached; every training image flipped, none segmented
    assert losses_and_ap("b") == first and len(calls) == 4  # the same trial again: read from the cache, same numbers
