"""The cross-study leaderboard of ``reports/index.html``: every variant of every study, ranked only beside
variants trained on the same data with the same budget.

An AP from one study is comparable with another study's only when both trained and evaluated on the same data
for the same budget. Each finished variant gets a comparison key from its first finished trial's config
(``comparison_key``; the seeds of a variant differ in nothing else):

* data: ``dataset.digest``, the sha256 of the dataset's identity (a config from before digests: its kind,
  annotation files and generator settings);
* scale: ``detector.scale`` (tiny or paper: the network's width and input size);
* epochs: the sum of the trial's phases' epochs (``detectors.build.trial_phases``: ``train.phases``, else the
  detector's declared scheme, else one phase of ``train.epochs``);
* batch: ``train.batch_size`` (global, over every worker), and ``train.max_steps`` (per phase; none: no cap);
* backbone: where it started, random weights or pretrained ones with the weights' digest (``backbone_digest``);
* tuning: none, or the samples per variant of the study's ``sweep.tune`` (``tuned.samples``): a tuned
  variant had more compute and the chance to fit its hyperparameters, an untuned one neither.

Variants with equal keys form a group and share one ranking, by mean AP over seeds; a variant that
``dashboards.convergence`` marks (still improving, input-independent, no detections) keeps its row below
every unmarked one. Latency is the variant's p50 at batch 1 with the speed configuration it was measured in;
two latencies compare only when their configurations read the same.

    entries = [LeaderboardEntry(sd, an, "focal/index.html"), ...]   # load_study + Analysis, read once
    leaderboard_section(entries, store)                              # the section's HTML
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from dashboards.data import dataset_identity, synthetic_text
from dashboards.html import esc, mean_ci, num, table

BUDGET_RULE = (
    "Variants share a ranking only when they trained on the same data (the sha256 of the dataset's identity: "
    "images, annotations, splits, generator settings) with the same budget: detector scale, total epochs (summed "
    "over a multi-phase scheme's phases), batch size, step cap (<code>train.max_steps</code>), where the "
    "backbone started (random weights, or pretrained weights with their digest) and the tuning budget (none, or "
    "the samples each variant searched with, <code>sweep.tune</code>). Anything else that differs "
    "(detector, loss, learning rate) is what the rows compare. Within a group rows are ordered by mean AP over "
    "seeds (95% t interval); a variant marked <i>still improving</i>, <i>input-independent</i> or <i>no "
    "detections</i> (its study page says why) is listed after every unmarked one and gets no rank. Latency is "
    "the median per-image time at batch 1; compare two latencies only when their speed configurations read the "
    "same (threads, device, precision, scale and, for figures measured alone after training, the CPU).")

ComparisonKey = Tuple[Any, ...]


@dataclass
class LeaderboardEntry:
    """One study as the index read it: ``dashboards.data.StudyData``, its ``Analysis`` (convergence marks,
    computed once for the headline too) and the relative link to its page (None: no page built yet)."""

    sd: Any
    an: Any
    href: Optional[str]


def total_epochs(config: Mapping[str, Any]) -> Any:
    """Epochs over all the trial's phases; ``train.epochs`` where the phases can't be resolved (a config from an
    older detbench, or a detector no longer registered)."""
    from detectors.build import trial_phases  # imports the model registry: only when an index is built

    try:
        return sum(p.epochs for p in trial_phases(config))
    except (KeyError, ValueError, TypeError):
        return (config.get("train") or {}).get("epochs")


def comparison_key(config: Mapping[str, Any]) -> ComparisonKey:
    """(data identity, scale, total epochs, batch size, max steps, backbone start, tuning samples): the
    variants whose results may be ranked together have equal keys."""
    det, tr = config.get("detector") or {}, config.get("train") or {}
    weights = (det.get("backbone") or {}).get("weights")
    # the digest names the weights themselves; a config from before digests has the file's name only
    backbone = "random" if weights is None else str(config.get("backbone_digest") or os.path.basename(weights))
    choice = config.get("tuned")
    tuned = 0 if not choice else choice.get("samples", "?")  # "?": tuned before the sample count was kept
    return (dataset_identity(config), det.get("scale", "tiny"), total_epochs(config),
            tr.get("batch_size"), tr.get("max_steps"), backbone, tuned)


def dataset_text(ds: Mapping[str, Any]) -> str:
    """"synthetic: 64 train / 30 val images, 128 px, 3 classes (generator seed 0)" or "COCO: train
    instances_train2017.json, val instances_val2017.json", with the digest's first 12 characters."""
    if ds.get("kind") == "synthetic":
        text = "synthetic: " + synthetic_text(ds.get("synthetic") or {})
    else:
        names = [os.path.basename(str(ds.get(k) or "?")) for k in ("train_annotations", "val_annotations")]
        text = f"COCO: train {names[0]}, val {names[1]}"
    return text + (f"; data sha256 {str(ds['digest'])[:12]}" if ds.get("digest") else "; no data digest")


def budget_text(key: ComparisonKey) -> str:
    """"tiny scale, 3 epochs, batch 8, no step cap, random backbone" from a ``comparison_key``."""
    _, scale, epochs, batch, max_steps, backbone, tuned = key
    steps = f"at most {max_steps} steps a phase" if max_steps else "no step cap"
    start = "random backbone" if backbone == "random" else f"pretrained backbone {backbone[:12]}"
    tuning = (f"tuned with {tuned} samples per variant" if isinstance(tuned, int) else "tuned") if tuned else "untuned"
    return f"{scale} scale, {epochs} epochs, batch {batch}, {steps}, {start}, {tuning}"


def speed_label(config: Mapping[str, Any], figure: Optional[Mapping[str, Any]], isolated: bool) -> str:
    """"tiny, 1 thread, cpu, fp32; alone on <CPU>" (the stored speed key and hardware of an isolated figure)
    or "...; in the trial, beside others" (each trial timed itself as it finished)."""
    if figure is not None:
        key, hw = figure["key"], figure.get("hardware") or {}
        machine = ", ".join(str(x) for x in (hw.get("cpu"), hw.get("gpu")) if x)
        where = f"alone on {machine}" if machine else "alone"
    else:
        tr = config.get("train") or {}
        key = {"scale": (config.get("detector") or {}).get("scale", "tiny"), "threads": config.get("num_threads", 1),
               "device": "cuda" if (config.get("gpus") or 0) > 0 else "cpu", "precision": tr.get("precision", "fp32"),
               "channels_last": tr.get("channels_last", False)}
        where = "alone" if isolated else "in the trial, beside others"
    threads = key.get("threads", 1)
    parts = [str(key.get("scale") or "?"), f"{threads} thread{'s' if threads != 1 else ''}",
             key.get("device", "cpu"), key.get("precision", "fp32")] + (["channels_last"] if key.get("channels_last")
                                                                       else [])
    return ", ".join(parts) + f"; {where}"


def _speed_figures(store, entries: Sequence[LeaderboardEntry]) -> Dict[str, Dict[str, Any]]:
    """The isolated speed figures every entry's trials name, in one query."""
    digests = {d for e in entries for d in e.sd.data("speed_key").values()}
    if not digests or not hasattr(store, "speed_figures"):
        return {}
    return store.speed_figures(digests)


def variant_rows(entry: LeaderboardEntry, figures: Mapping[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One dict per finished variant of the study: its ``key``, ``dataset`` text, AP summary, AP50 and latency
    means, ``speed`` label (one per speed figure its seeds name), convergence ``marks`` and the study's link."""
    sd, an = entry.sd, entry.an
    summaries = {m: an.summary(m).set_index("variant") for m in ("AP", "AP50", "speed/latency_ms_p50")
                 if m in sd.final}
    marks = an.convergence()["variants"]
    speed_keys = sd.data("speed_key")
    finished = sd.finished
    rows = []
    for v in sd.variants:
        trials = [t for t in finished if t["variant"] == v]
        if not trials or "AP" not in summaries:
            continue
        config = trials[0]["config"]
        digests = sorted({speed_keys[t["trial_key"]] for t in trials if t["trial_key"] in speed_keys})
        labels = [speed_label(config, figures.get(d), True) for d in digests] or [speed_label(config, None, False)]
        ap = summaries["AP"].loc[v]
        value = {m: s.loc[v, "mean"] for m, s in summaries.items() if m != "AP"}
        det = config.get("detector") or {}
        mark = marks.get(v) or {"marks": [], "text": ""}
        rows.append({"key": comparison_key(config), "dataset": dataset_text(config.get("dataset") or {}),
                     "study": sd.name, "variant": v, "href": entry.href, "mean": float(ap["mean"]),
                     "lo": ap["lo"], "hi": ap["hi"], "seeds": int(ap["n"]), "AP50": value.get("AP50"),
                     "latency": value.get("speed/latency_ms_p50"), "speed": "; ".join(dict.fromkeys(labels)),
                     "detector": f"{det.get('name', '?')} ({det.get('scale', 'tiny')})",
                     "marks": mark["marks"], "mark_text": mark["text"]})
    return rows


def rank(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows of one group best first: unmarked variants by mean AP (higher first; no AP last), then the
    marked ones the same way; each gets ``rank`` (1, 2, ... over the unmarked; None for a marked one).
    Equal means keep the order given."""
    def order(r):
        ap = r["mean"]
        return (bool(r["marks"]), -ap if math.isfinite(ap) else math.inf)

    out, n = [], 0
    for r in sorted(rows, key=order):
        n += not r["marks"]
        out.append({**r, "rank": None if r["marks"] else n})
    return out


def groups(rows: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, List[Dict[str, Any]]]]:
    """(dataset text, budget text, ranked rows) per comparison key, ordered by dataset and budget text."""
    by_key: Dict[ComparisonKey, List[Dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    found = [(members[0]["dataset"], budget_text(key), rank(members)) for key, members in by_key.items()]
    return sorted(found, key=lambda g: (g[0], g[1]))


def _table(ranked: Sequence[Dict[str, Any]]) -> str:
    cells = []
    for r in ranked:
        study = (f'<a href="{esc(r["href"])}">{esc(r["study"])}</a>' if r["href"] else esc(r["study"]))
        cells.append({
            "rank": str(r["rank"]) if r["rank"] else '<span class="na">–</span>',
            "study": study, "variant": esc(r["variant"]), "detector": esc(r["detector"]),
            "AP ± 95% CI": mean_ci(r["mean"], r["lo"], r["hi"]), "seeds": r["seeds"],
            "AP50": num(r["AP50"]), "latency p50 ms": num(r["latency"], 1),
            "speed configuration": esc(r["speed"]) if r["latency"] is not None and math.isfinite(r["latency"])
            else '<span class="na">not measured</span>',
            "convergence": f'<span class="warn">{esc(r["mark_text"])}</span>' if r["marks"] else "",
        })
    return table(pd.DataFrame(cells), left=["study", "variant", "detector", "speed configuration", "convergence"])


def leaderboard_section(entries: Sequence[LeaderboardEntry], store) -> str:
    """The leaderboard: a heading and the grouping rule, then per dataset (a heading) one ranked table per
    budget."""
    figures = _speed_figures(store, entries)
    rows = [r for e in entries for r in variant_rows(e, figures)]
    out = [f'<h2 id="leaderboard">Leaderboard</h2><p class=note>{BUDGET_RULE}</p>']
    if not rows:
        return out[0] + '<p class="na">No finished variants yet.</p>'
    shown = None
    for data, budget, ranked in groups(rows):
        if data != shown:
            out.append(f"<h3>{esc(data)}</h3>")
            shown = data
        studies = len({r["study"] for r in ranked})
        out.append(f"<h4>{esc(budget)}</h4><p class=note>{len(ranked)} variant{'s' if len(ranked) != 1 else ''} "
                   f"from {studies} stud{'ies' if studies != 1 else 'y'}, ranked together</p>" + _table(ranked))
    return "".join(out)
