"""The gallery page: which val images it shows, and the page built from a fake study with its images on disk
(the drawing itself, in Chromium: test_browser.py)."""
import json
import os
import re

import pandas as pd
import pytest

import fakes
from dashboards.errors import classify
from dashboards.gallery import GALLERY_PAGE, IMAGES_DIR, choose_images, image_scores


def _scores(recall, miss=(0, 0, 0, 0), bkg=(0, 0, 0, 0), loc=(0, 0, 0, 0), cls=(0, 0, 0, 0)):
    return pd.DataFrame({"recall": recall, "miss": miss, "bkg": bkg, "loc": loc, "cls": cls}, index=[1, 2, 3, 4])


def test_image_scores_recall_at_n_and_errors_per_image():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20]}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [80, 0, 10, 10], "score": 0.9},   # bkg, rank 0
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8},    # tp, rank 1 < n = 2
            {"image_id": 1, "category_id": 1, "bbox": [52, 52, 20, 20], "score": 0.1},  # tp, rank 2: beyond n
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.4}]    # bkg on an empty image
    out = image_scores(gt, classify(gt, dets))
    # image 1: one of its 2 objects found by its 2 best detections -> recall 1/2; image 2: no object -> NaN
    assert out.loc[1, "recall"] == 0.5 and pd.isna(out.loc[2, "recall"])
    assert out.loc[1, "bkg"] == pytest.approx(0.9) and out.loc[2, "bkg"] == pytest.approx(0.4)
    assert out["miss"].tolist() == [0, 0] and out["loc"].tolist() == [0, 0]


def test_choose_images_disagreement_first_then_each_variants_worst():
    # a and b agree on images 1, 2 and 4; on image 3 a finds every object and b none: spread 1 - 0 = 1
    a = _scores([1.0, 0.5, 1.0, 1.0], miss=(0, 1, 0, 0), bkg=(0.2, 0.0, 0.0, 0.9))
    b = _scores([1.0, 0.5, 0.0, 1.0], miss=(0, 1, 2, 0), bkg=(0.5, 0.0, 0.0, 0.0), loc=(0.0, 0.3, 0.0, 0.3))
    chosen = choose_images({"a": a, "b": b}, ["a", "b"], disagree=2)
    assert [(c["image_id"], c["variant"], c["type"], c["value"]) for c in chosen] == [
        (3, None, "disagree", 1.0),  # the only image with a spread above 0, though 2 were allowed
        (2, "a", "miss", 1.0),       # a misses only on image 2
        (4, "a", "bkg", 0.9),        # 0.9 > 0.2
        # b misses most on 3, then 2: both taken; its background error on image 1 is free
        (1, "b", "bkg", 0.5),
        # b's localisation errors (images 2 and 4) are on images already shown: none added
    ]
    # room for one image only: the disagreement
    assert [c["image_id"] for c in choose_images({"a": a, "b": b}, ["a", "b"], limit=1)] == [3]
    # a tie goes to the lower image id
    c = _scores([1.0, 1.0, 1.0, 1.0], bkg=(0.0, 0.5, 0.5, 0.0))
    assert [(x["image_id"], x["type"]) for x in choose_images({"c": c}, ["c"])] == [(2, "bkg")]


def _gallery(reports):
    return (reports / fakes.STUDY / GALLERY_PAGE[1]).read_text()


def _figures(text):
    """(div id, traces, layout) of every plotly figure on a page."""
    return [(m.group(1), json.loads(m.group(2)), json.loads(m.group(3))) for m in re.finditer(
        r'Plotly.newPlot\(\s*"([^"]+)",\s*(\[.*?\]),\s*(\{.*?\})\s*,\s*\{"displaylogo', text, re.S)]


def test_gallery_page_from_the_fake_study(gallery_reports):
    reports, ctx = gallery_reports["reports"], gallery_reports["ctx"]
    text = _gallery(reports)
    # linked from every page of the study
    assert GALLERY_PAGE in ctx.pages
    for name in ("index.html", "accuracy.html", "gallery.html"):
        assert '<a href="gallery.html"' in (reports / fakes.STUDY / name).read_text(), name
    figs = _figures(text)
    assert len(figs) == ctx.plots["gallery.html"] == text.count('class="gcard"') > 0
    assert "Where the variants disagree most" in text and "first seed (gamma=0,alpha=0.75: seed 0" in text
    for v in fakes.VARIANTS:
        assert f"Worst images of {v}, by error type" in text
    # each figure: ground truth + 3 variants, each panel the image's thumbnail, under reports/_images/<digest>/
    store = gallery_reports["store"]
    digest = next(iter(store.trial_data(fakes.STUDY, "val_ground_truth").values()))
    gt = store.ground_truth(digest)
    _, _, layout = figs[0]
    image_id = int(re.search(r'class="gcard" data-image="(\d+)"', text).group(1))
    assert [im["source"] for im in layout["images"]] == [f"../{IMAGES_DIR}/{digest[:16]}/{image_id}.jpg"] * 4
    assert [a["text"] for a in layout["annotations"]] == ["ground truth", *fakes.VARIANTS]
    # the ground-truth panel holds the image's objects, as rects in its pixels (xywh -> x0, y0, x1, y1)
    objects = [a for a in gt["annotations"] if a["image_id"] == image_id]
    drawn = [s for s in layout["shapes"] if s["name"].startswith("gt|")]
    assert [(s["x0"], s["y0"], s["x1"], s["y1"]) for s in drawn] == [
        (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in objects]
    assert all(s["xref"] == "x" for s in drawn)
    assert {s["name"].split("|")[0] for s in layout["shapes"]} <= {"gt", "tp", "miss", "cls", "loc", "both",
                                                                    "dupe", "bkg"}


def test_thumbnails_are_written_once(gallery_reports):
    from dashboards import build_study

    thumbs = gallery_reports["reports"] / IMAGES_DIR
    files = sorted(thumbs.rglob("*.jpg"))
    assert files and all(f.stat().st_size < 20_000 for f in files)
    before = {f: f.stat().st_mtime_ns for f in files}
    build_study(gallery_reports["store"], fakes.STUDY, str(gallery_reports["reports"]), resamples=20)
    assert {f: f.stat().st_mtime_ns for f in sorted(thumbs.rglob("*.jpg"))} == before


def test_no_gallery_without_the_val_images(fake_reports):
    # the fake study's trials name no images directory that exists: no page, no link
    assert not os.path.exists(fake_reports["reports"] / fakes.STUDY / GALLERY_PAGE[1])
    assert "gallery.html" not in (fake_reports["reports"] / fakes.STUDY / "index.html").read_text()
