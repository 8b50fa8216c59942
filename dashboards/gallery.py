"""The gallery page of a study (``reports/<study>/gallery.html``): the same val images for every variant, the
ground truth and each variant's detections drawn over them side by side.

    scores = {v: image_scores(gt, classify(gt, detections[v])) for v in variants}
    choose_images(scores, variants)   # [{"image_id", "variant", "type", "value"}, ...] in page order

Which images: first those where the variants disagree most (the spread over variants of an image's recall at
its own number of objects, below), then each variant's worst image per error type (TIDE's types, from
``dashboards.errors.classify``; missed: the most missed objects, background / localisation / classification:
the largest sum of those errors' scores, since a confident error costs more AP than one below every true
positive). One seed per variant is drawn, the first, so the drawings are of one trained model each.

An image's recall at n, n its number of objects: the share of them its n highest-scoring detections find
(TIDE's match: same class, IoU >= 0.5). It needs no score threshold, so variants with differently calibrated
scores compare (as ``errors.confusion_counts`` does).

The images are the val files on disk (``config["dataset"]["val_images"]``; file names from the stored ground
truth, else its annotations file ``val_annotations``): one thumbnail per image, written once under
``reports/_images/<ground-truth digest>/`` and shared by every study on that val set. A study whose val images
are not on disk (a store copied elsewhere) has no gallery page and no link to one. The boxes are plotly
shapes over the thumbnail in the image's own pixel coordinates; a few lines of JS on the page show or hide them
by the score threshold, class and error type chosen there.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dashboards.context import PageContext
from dashboards.errors import ERROR_LABELS, ERROR_TYPES, classify
from dashboards.html import Figures, esc, num

GALLERY_PAGE = ("Gallery", "gallery.html")
IMAGES_DIR = "_images"     # under the reports dir, shared by every study
THUMB_SIDE = 320           # px, the longer side of a thumbnail (a panel is ~200 px wide)
DISAGREE = 8               # images where the variants disagree most
WORST_TYPES = ("miss", "bkg", "loc", "cls")
MAX_IMAGES = 48            # with many variants, the worst images are cut here
MIN_SCORE, MAX_BOXES = 0.05, 30   # per panel: detections at or above MIN_SCORE, the MAX_BOXES highest-scoring
THRESHOLD = 0.3            # the page's initial score threshold
CLASS_COLOURS = qualitative.Dark24 + qualitative.Light24


# ------------------------------------------------------------------ which images

def image_scores(gt: dict, records: List[dict]) -> pd.DataFrame:
    """Per val image (index: image id): ``recall`` at its number of objects (NaN without objects), ``miss``
    (missed objects) and ``bkg`` / ``loc`` / ``cls`` (sum of those errors' scores), from ``classify`` records."""
    objects = pd.Series(0, index=[img["id"] for img in gt.get("images", [])], dtype=float)
    for a in gt.get("annotations", []):
        if not a.get("iscrowd", 0):
            objects[a["image_id"]] += 1
    out = pd.DataFrame(0.0, index=objects.index, columns=["found", *WORST_TYPES])
    for r in records:
        if r["type"] == "tp" and r["rank"] < objects[r["image_id"]]:
            out.loc[r["image_id"], "found"] += 1
        elif r["type"] == "miss":
            out.loc[r["image_id"], "miss"] += 1
        elif r["type"] in WORST_TYPES:
            out.loc[r["image_id"], r["type"]] += r["score"]
    out.insert(0, "recall", out.pop("found") / objects.where(objects > 0))
    return out


def choose_images(scores: Dict[str, pd.DataFrame], variants: Sequence[str], disagree: int = DISAGREE,
                  limit: int = MAX_IMAGES) -> List[dict]:
    """The gallery's images in page order, each ``{"image_id", "variant", "type", "value"}``.

    First up to ``disagree`` images by the spread (max - min over ``variants``) of ``recall`` (only images with
    objects and a spread above 0; variant None, type "disagree"), then for each variant and each of
    ``WORST_TYPES`` the image not yet chosen with the largest value above 0. Ties go to the lower image id.
    """
    recall = pd.DataFrame({v: scores[v]["recall"] for v in variants}).dropna()
    spread = (recall.max(axis=1) - recall.min(axis=1)).loc[lambda s: s > 0]
    spread = spread.sort_index().sort_values(ascending=False, kind="stable")
    chosen = [{"image_id": int(i), "variant": None, "type": "disagree", "value": float(s)}
              for i, s in spread.iloc[:disagree].items()]
    for v in variants:
        for kind in WORST_TYPES:
            col = scores[v][kind]
            col = col[(col > 0) & ~col.index.isin([c["image_id"] for c in chosen])]
            if len(chosen) < limit and not col.empty:
                col = col.sort_index().sort_values(ascending=False, kind="stable")
                chosen.append({"image_id": int(col.index[0]), "variant": v, "type": kind, "value": float(col.iloc[0])})
    return chosen


# ------------------------------------------------------------------ what is drawn, from the store

def load_gallery(sd, reports_dir: str) -> Optional[dict]:
    """The drawn trial of each variant (its first seed), their ground truth and val image files, or None when
    the study has no stored detections with ground truth or none of its val images is on disk.

    Returns ``{"trials": {variant: trial}, "digest", "gt", "files": {image id: path},
    "thumbs": dir}`` (an image is available when its file or its thumbnail exists)."""
    digests = sd.data("val_ground_truth")
    # each variant's first seed's detections only (2,400 a trial on 150 images); all where one has none
    firsts = [min(ts, key=lambda t: t["seed"]) for v in sd.variants
              if (ts := [t for t in sd.finished if t["variant"] == v and t["trial_key"] in digests])]
    dets = sd.data_of("detections", [t["trial_key"] for t in firsts])
    if len(dets) < len(firsts):
        dets = sd.data("detections")
    trials = {}
    for v in sd.variants:
        first = [t for t in sd.finished if t["variant"] == v and t["trial_key"] in dets and t["trial_key"] in digests]
        if first:
            trials[v] = min(first, key=lambda t: t["seed"])
    if not trials:
        return None
    digest = digests[next(iter(trials.values()))["trial_key"]]
    trials = {v: t for v, t in trials.items() if digests[t["trial_key"]] == digest}
    gt = sd.ground_truth(digest)
    if gt is None:
        return None
    thumbs = os.path.join(reports_dir, IMAGES_DIR, digest[:16])
    files = _image_files(gt, next(iter(trials.values()))["config"].get("dataset") or {})
    files = {i: p for i, p in files.items() if os.path.exists(_thumb_path(thumbs, i)) or os.path.isfile(p)}
    if not files:
        return None
    return {"trials": trials, "digest": digest, "gt": gt, "files": files, "thumbs": thumbs}


def _image_files(gt: dict, dataset: dict) -> Dict[int, str]:
    """image id -> path of the val image; the stored ground truth keeps no file names (``BBOX_FIELDS``), so
    they come from the annotations file when it is still there."""
    images_dir = dataset.get("val_images")
    if not images_dir or not os.path.isdir(images_dir):
        return {}
    names = {img["id"]: img["file_name"] for img in gt.get("images", []) if "file_name" in img}
    path = dataset.get("val_annotations")
    if not names and path and os.path.isfile(path):
        with open(path) as f:
            names = {img["id"]: img["file_name"] for img in json.load(f).get("images", []) if "file_name" in img}
    return {i: os.path.join(images_dir, name) for i, name in names.items()}


def _thumb_path(thumbs: str, image_id: int) -> str:
    return os.path.join(thumbs, f"{image_id}.jpg")


def write_thumbnail(src: str, dst: str) -> None:
    """The image at ``src`` shrunk to ``THUMB_SIDE`` px on its longer side (never enlarged), as JPEG at
    ``dst``; kept when already there (written once per val set, however many pages show it)."""
    from PIL import Image

    if os.path.exists(dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with Image.open(src) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        tmp = f"{dst}.{os.getpid()}.tmp"
        img.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, dst)


# ------------------------------------------------------------------ drawing

def _shape(box: dict, kind: str, label: str, colour: str, visible: bool) -> dict:
    """A plotly rect shape over a COCO xywh box. ``name`` carries what the page's filter reads:
    ``type|class id|score|label`` (score empty for ground truth and missed objects)."""
    x, y, w, h = box["bbox"]
    score = "" if box.get("score") is None else f"{box['score']:.3f}"
    line = {"gt": dict(width=2.5), "miss": dict(width=1.5, dash="dot")}.get(kind, dict(width=1.5))
    return dict(type="rect", x0=x, y0=y, x1=x + w, y1=y + h, line=dict(color=colour, **line), visible=visible,
                name=f"{kind}|{box['class']}|{score}|{label}",
                label=dict(text=label, font=dict(size=9, color=colour), textposition="top left"))


def image_figure(image: dict, src: str, panels: Sequence[tuple], names: Dict[int, str],
                 colours: Dict[int, str], width: int = 1180) -> go.Figure:
    """One val image (its ``width`` x ``height`` record) as panels side by side, each the thumbnail at ``src``
    stretched over ``[0, width] x [0, height]`` (y down, the image's pixels) with its boxes.

    ``panels``: ``(title, boxes)``, boxes ``{"type", "class", "bbox", "score"}`` (``classify``'s records, or
    ground truth with type "gt"); those under ``THRESHOLD`` start hidden."""
    w, h = image["width"], image["height"]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels], horizontal_spacing=0.01)
    shapes = []
    for i, (_, boxes) in enumerate(panels, start=1):
        ax = "" if i == 1 else str(i)
        fig.add_layout_image(source=src, xref=f"x{ax}", yref=f"y{ax}", x=0, y=0, sizex=w, sizey=h,
                             xanchor="left", yanchor="top", sizing="stretch", layer="below")
        fig.update_xaxes(range=[0, w], visible=False, constrain="domain", row=1, col=i)
        fig.update_yaxes(range=[h, 0], visible=False, constrain="domain", scaleanchor=f"x{ax}", row=1, col=i)
        for b in boxes:
            kind, name = b["type"], names.get(b["class"], str(b["class"]))
            label = name if kind == "gt" else f"{name} missed" if kind == "miss" else f"{name} {b['score']:.2f}"
            visible = b.get("score") is None or b["score"] >= THRESHOLD
            shapes.append(dict(_shape(b, kind, label, colours.get(b["class"], "#000"), visible),
                               xref=f"x{ax}", yref=f"y{ax}"))
    panel = (width - 10 * len(panels)) / len(panels)
    fig.update_layout(shapes=shapes, template="none", showlegend=False, margin=dict(l=0, r=0, t=22, b=0),
                      height=int(min(max(panel * h / w + 26, 160), 440)), dragmode=False)
    fig.update_annotations(font_size=11)
    return fig


def _panels(gallery: dict, records: Dict[str, List[dict]], image_id: int) -> List[tuple]:
    gts = [{"type": "gt", "class": a["category_id"], "bbox": a["bbox"], "score": None}
           for a in gallery["gt"].get("annotations", []) if a["image_id"] == image_id and not a.get("iscrowd", 0)]
    panels = [("ground truth", gts)]
    for v, recs in records.items():
        mine = [r for r in recs if r["image_id"] == image_id]
        dets = sorted((r for r in mine if r["score"] is not None and r["score"] >= MIN_SCORE),
                      key=lambda r: -r["score"])[:MAX_BOXES]
        panels.append((v, dets + [r for r in mine if r["type"] == "miss"]))
    return panels


def _why(c: dict) -> str:
    if c["type"] == "disagree":
        return f"variants disagree: recall at n spreads by {c['value']:.2f}"
    value = f"{int(c['value'])} missed" if c["type"] == "miss" else f"score sum {c['value']:.2f}"
    return f"worst for {esc(c['variant'])}: {esc(ERROR_LABELS[c['type']])} ({value})"


# ------------------------------------------------------------------ the page

INTRO = ("<p class=note>The same val images for every variant: the ground truth on the left, then each variant's "
         "detections from its first seed ({seeds}). First the images where the variants disagree most (the "
         "spread over variants of an image's recall at n, n its number of objects: the share its n "
         "highest-scoring detections find, same class at IoU &ge; 0.5, so no score threshold is needed), then "
         "each variant's worst image per error type (TIDE, as on the accuracy page: most missed objects; largest "
         "sum of scores of its background, localisation or classification errors). Per panel the {boxes} "
         "highest-scoring detections at score &ge; {min_score} are drawn; a dotted box is an object that variant "
         "missed (TIDE's: no detection at any score found it, so the threshold does not change it). The filters "
         "hide the boxes they leave out and an image with no box left in a variant's panel.</p>")

SCRIPT = """<script>
(function () {
  var $ = function (id) { return document.getElementById(id); };
  function apply() {
    var t = +$("g-thr").value, c = $("g-cls").value, e = $("g-err").value, lab = $("g-lab").checked, shown = 0;
    $("g-thr-v").textContent = t.toFixed(2);
    document.querySelectorAll(".gcard").forEach(function (card) {
      var gd = card.querySelector(".js-plotly-plot");
      if (!gd || !gd.layout) return;
      var upd = {}, any = false;
      card.style.display = "";
      (gd.layout.shapes || []).forEach(function (s, i) {
        var m = s.name.split("|"), kind = m[0], score = m[2] === "" ? null : +m[2];
        var v = (c === "" || m[1] === c) && (score === null || score >= t) && (e === "" || kind === "gt" || kind === e);
        upd["shapes[" + i + "].visible"] = v;
        upd["shapes[" + i + "].label.text"] = lab ? m.slice(3).join("|") : "";
        if (v && kind !== "gt") any = true;
      });
      Plotly.relayout(gd, upd);
      if (!any && (c !== "" || e !== "")) card.style.display = "none"; else shown++;
    });
    $("g-count").textContent = shown + " of " + document.querySelectorAll(".gcard").length + " images shown";
  }
  ["g-thr", "g-cls", "g-err", "g-lab"].forEach(function (id) { $(id).addEventListener("input", apply); });
  window.addEventListener("load", apply);
})();
</script>"""


def _controls(names: Dict[int, str], colours: Dict[int, str]) -> str:
    classes = "".join(f'<option value="{c}">{esc(n)}</option>' for c, n in names.items())
    types = "".join(f'<option value="{k}">{esc(label)}</option>'
                    for k, label in (("tp", "true positive"), *((k, ERROR_LABELS[k]) for k in ERROR_TYPES)))
    legend = " ".join(f'<span style="color:{colours[c]};font-weight:bold">&#9632; {esc(n)}</span>'
                      for c, n in names.items())
    return (f'<div class="box"><label>score &ge; <input type="range" id="g-thr" min="{MIN_SCORE}" max="1" '
            f'step="0.05" value="{THRESHOLD}"> <output id="g-thr-v">{THRESHOLD:.2f}</output></label> &nbsp; '
            f'<label>class <select id="g-cls"><option value="">every class</option>{classes}</select></label> '
            f'&nbsp; <label>error type <select id="g-err"><option value="">every type</option>{types}</select>'
            f'</label> &nbsp; <label><input type="checkbox" id="g-lab" checked> labels</label> &nbsp; '
            f'<span id="g-count" class="note"></span><br>{legend} <span class="note">(thick: ground truth; '
            f'thin: detection; dotted: missed)</span></div>')


def build_gallery(ctx: PageContext, gallery: dict) -> str:
    """The gallery page from ``load_gallery``'s result; writes the thumbnails it shows that are missing."""
    sd, figs, gt = ctx.sd, Figures("gallery"), gallery["gt"]
    variants = list(gallery["trials"])
    dets = sd.data_of("detections", [t["trial_key"] for t in gallery["trials"].values()])
    records = {v: classify(gt, dets[t["trial_key"]]) for v, t in gallery["trials"].items()}
    available = set(gallery["files"])
    scores = {v: image_scores(gt, r).loc[lambda s: s.index.isin(available)] for v, r in records.items()}
    chosen = choose_images(scores, variants)
    cats = sorted(gt.get("categories", []), key=lambda c: c["id"])
    names = {c["id"]: c.get("name", str(c["id"])) for c in cats}
    colours = {c: CLASS_COLOURS[i % len(CLASS_COLOURS)] for i, c in enumerate(names)}
    images = {img["id"]: img for img in gt.get("images", [])}
    rel = os.path.relpath(gallery["thumbs"], ctx.study_dir).replace(os.sep, "/")
    seeds = ", ".join(f"{v}: seed {t['seed']}" for v, t in gallery["trials"].items())
    parts = ["<style>.gcard .modebar-container{display:none}</style>",  # it would cover the last panel's title
             INTRO.format(seeds=esc(seeds), boxes=MAX_BOXES, min_score=MIN_SCORE),
             _controls(names, colours)]
    left_out = [v for v in sd.variants if v not in gallery["trials"]]
    if left_out:
        parts.append(f"<p class=note>Not drawn (no detections on this val set): {esc(', '.join(left_out))}.</p>")
    group = ""
    for c in chosen:
        if (c["variant"] or "disagree") != group:  # chosen comes grouped: disagreement first, then per variant
            group = c["variant"] or "disagree"
            parts.append("<h2>Where the variants disagree most</h2>" if c["variant"] is None
                         else f"<h2>Worst images of {esc(c['variant'])}, by error type</h2>")
        i = c["image_id"]
        write_thumbnail(gallery["files"][i], _thumb_path(gallery["thumbs"], i))
        fig = image_figure(images[i], f"{rel}/{i}.jpg", _panels(gallery, records, i), names, colours)
        parts.append(f'<div class="gcard" data-image="{i}"><p class=note>image {i} '
                     f'({esc(os.path.basename(gallery["files"][i]))}, {images[i]["width"]} x '
                     f'{images[i]["height"]} px): {_why(c)}</p>{figs.div(fig)}</div>')
    if not chosen:
        parts.append(f'<p class="na">No image where the variants differ or err ({num(len(available))} '
                     "val images on disk).</p>")
    parts.append(SCRIPT)
    return ctx.write(GALLERY_PAGE[1], GALLERY_PAGE[0], "".join(parts), figs)
