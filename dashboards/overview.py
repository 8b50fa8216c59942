"""``reports/<study>/index.html`` (what was compared, the result, paper comparison, trials)
and ``reports/index.html`` (every study, its last run, its headline)."""
from __future__ import annotations

import math
import os
from typing import Any, Dict

import pandas as pd

from dashboards import figures
from dashboards import stats
from dashboards.analysis import RULE, Analysis, latency_budgets, verdict
from dashboards.context import TUNING_PAGE, PageContext
from dashboards.convergence import BOX_TOLERANCE_PX
from dashboards.data import fmt_value, load_study, synthetic_text
from dashboards.html import Figures, esc, interval, kv, mean_ci, nav, num, table, write_page
from dashboards.leaderboard import LeaderboardEntry, leaderboard_section
from dashboards.paper import comparisons
from dashboards.tuning import tuning_name


def _fmt_time(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC") if t is not None else "–"


def _duration(seconds: float) -> str:
    if not seconds or not math.isfinite(seconds):
        return "–"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def status_counts(trials) -> Dict[str, int]:
    """{"finished": 6, "failed": 1, "superseded": 2, ...}"""
    out: Dict[str, int] = {}
    for t in trials:
        key = "superseded" if t.get("superseded") else t["status"]
        out[key] = out.get(key, 0) + 1
    return out


def setup_section(ctx: PageContext) -> str:
    """What was compared, on what data, with what budget."""
    sd, cfg = ctx.sd, ctx.sd.config()
    swept = "".join(f"<li><code>{esc(k)}</code>: "
                    f"{esc(', '.join(fmt_value(sd.variant_params.get(v, {}).get(k)) for v in sd.variants))}</li>"
                    for k in sd.swept) or "<li>nothing (one variant)</li>"
    ds = cfg.get("dataset", {})
    if ds.get("kind") == "synthetic":
        data = "generated synthetic set: " + synthetic_text(ds.get("synthetic") or {})
    else:
        data = (f"COCO format: train <code>{esc(ds.get('train_annotations'))}</code>, "
                f"val <code>{esc(ds.get('val_annotations'))}</code>")
        data = data if ds else "–"
    tr, ev = cfg.get("train", {}), cfg.get("eval", {})
    budget = (f"{tr.get('epochs', '?')} epochs" + (f" (at most {tr['max_steps']} steps)" if tr.get("max_steps") else "")
              + f", batch {tr.get('batch_size', '?')}, {tr.get('optimizer', '?')} lr {tr.get('lr', '?')}, "
              f"{tr.get('schedule', '?')} schedule; {cfg.get('num_threads', '?')} CPU thread(s) per trial")
    seeds = sorted({t["seed"] for t in sd.trials})
    durations = [t["duration_s"] for t in sd.trials if t["duration_s"]]
    starts = [t["started_at"] for t in sd.trials if t["started_at"]]
    ends = [t["finished_at"] for t in sd.trials if t["finished_at"]]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan
    det, loss = cfg.get("detector", {}), cfg.get("loss") or {}
    counts = status_counts(sd.trials)
    rows = [
        ("compared", f"{len(sd.variants)} variants over <ul style='margin:0'>{swept}</ul>"),
        ("detector", esc(f"swept (see the variants), scale {det.get('scale', '?')}" if "detector.name" in sd.swept
                         else f"{det.get('name', '?')} ({det.get('scale', '?')})")
         + (f" <code>{esc(det.get('params'))}</code>" if det.get("params") else "")),
        ("loss", (esc(loss.get("name", "?")) + (" (parameters swept)" if any(k.startswith("loss.") for k in sd.swept)
                                                else f" <code>{esc(loss.get('params'))}</code>")) if loss
         else "each detector's default losses"),
        ("backbone", backbone_text(det.get("backbone") or {}, cfg.get("backbone_digest"), ctx.pretrainings,
                                   "detector.backbone.weights" in sd.swept)),
        ("data", data),
        ("budget per trial", esc(budget) + phases_text(sd)),
        ("evaluation", esc(f"pycocotools COCOeval on the val split; score > {ev.get('score_thresh', '?')}, "
                           f"NMS IoU {_nms(ev)}, at most {ev.get('max_dets', '?')} detections/image")),
        ("seeds", esc(", ".join(map(str, seeds)) or "–")),
        ("trials", esc(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
         + f"; compute {_duration(sum(durations))}, wall clock {_duration(wall)}"),
        ("study file", f"<code>{esc(sd.info.get('study_file') or '–')}</code>"),
    ]
    return "<h2>What was compared</h2>" + kv(rows)


def _nms(ev: Dict[str, Any]) -> str:
    """The study's NMS IoU, or that each detector used its own paper's (``eval.nms_iou: null``)."""
    return "each detector's own (its paper's)" if ev.get("nms_iou") is None else str(ev["nms_iou"])


def backbone_text(backbone: Dict[str, Any], digest: Any, pretrainings: Dict[str, Any], swept: bool) -> str:
    """Where the backbone's weights came from, and what of it was fine-tuned."""
    weights = backbone.get("weights")
    tuning = (f"; its first {backbone.get('freeze_at')} stages frozen, batch norms "
              f"{'frozen' if backbone.get('norm') == 'frozen' else 'trained'}")
    if swept:
        return "swept (see the variants): pretrained or from random weights" + esc(tuning if weights else "")
    if weights is None:
        return "random initialisation (trained from scratch; the papers start from ImageNet-pretrained weights)"
    if weights == "pretrain":
        run = pretrainings.get(digest) or {}
        result, settings = run.get("result") or {}, backbone.get("pretrain") or {}
        accuracy = f", held-out accuracy {result['val_accuracy']:.3f}" if "val_accuracy" in result else ""
        return esc(f"pretrained by the platform's pretraining stage, the stand-in for ImageNet: the tiny body as a "
                   f"classifier of {settings.get('images', '?')} generated images, {settings.get('epochs', '?')} "
                   f"epochs{accuracy} (weights {str(digest)[:12]})" + tuning)
    return (f"weights file <code>{esc(weights)}</code> (sha256 {esc(str(digest)[:12])})" + esc(tuning))


def phases_text(sd) -> str:
    """Each multi-phase variant's phases and epochs (alternating training's four steps, R-CNN's SVMs),
    beside the single-phase variants' budget, so schemes are compared knowing what each trained."""
    from detectors.build import trial_phases

    lines = []
    for v in sd.variants:
        trial = next((t for t in sd.finished + sd.failed if t["variant"] == v), None)
        try:
            phases = trial_phases(trial["config"]) if trial else []
        except (KeyError, ValueError):  # a config from an older detbench: its phases are not known here
            phases = []
        if len(phases) > 1:
            steps = " + ".join(f"{p.name} {p.epochs}" for p in phases)
            lines.append(f"<li>{esc(v)}: {len(phases)} phases, {esc(steps)} epochs</li>")
    return f"<ul style='margin:0'>{''.join(lines)}</ul>" if lines else ""


CONVERGENCE_RULE = (
    "A variant is marked <i>still improving</i> when most of its seeds' val AP was still rising at the end of "
    "training: the OLS slope of val AP against epoch over the last max(3, half) evaluated epochs has a 95% t "
    "interval above 0 (fewer than 3 evaluated epochs leave it unknown). Its AP then measures the epoch budget as "
    "much as the method, and more epochs could change the ranking. It is marked <i>input-independent</i> when "
    f"most seeds draw the same highest-scoring box (within {BOX_TOLERANCE_PX:g} px) on every val image, and "
    "<i>no detections</i> when most seeds found nothing: that AP is not the result of detecting anything. Marked "
    "variants keep their rows but are set aside: no candidates for the winner or the speed-accuracy frontier.")


def convergence_cell(an: Analysis, variant: str) -> str:
    """A variant's convergence marks as a table cell (``dashboards.convergence.variant_marks``)."""
    m = an.convergence()["variants"].get(variant)
    if m is None:
        return num(None)
    if m["marks"]:
        return f'<span class="warn">{esc(m["text"])}</span>'
    if m["unknown_slope"]:
        return '<span class="note">no mark; slope unknown (fewer than 3 evaluated epochs)</span>'
    return '<span class="note">no mark</span>'


def set_aside_text(aside: Dict[str, str], what: str) -> str:
    """"Set aside, not candidates for <what>: v (why); w (why)." as a paragraph, or "" when nothing is."""
    if not aside:
        return ""
    names = "; ".join(f"<b>{esc(v)}</b> ({esc(why)})" for v, why in aside.items())
    return f"<p>Set aside, not candidates for {esc(what)}: {names}.</p>"


def variants_table(ctx: PageContext) -> str:
    an, sd = ctx.an, ctx.sd
    cols = {"AP": an.summary("AP"), "AP50": an.summary("AP50"), "AP75": an.summary("AP75"),
            "train img/s": an.summary("speed/train_img_s"), "latency p50 ms": an.summary("speed/latency_ms_p50")}
    h = an.headline()
    failed = pd.Series([t["variant"] for t in sd.failed]).value_counts().to_dict() if sd.failed else {}
    rows = []
    for i, v in enumerate(sd.variants):
        row = {"variant": esc(v) + (" ★" if h and v == h["winner"] else ""), "seeds": len(sd.seeds(v))}
        for name, s in cols.items():
            r = s.iloc[i]
            digits = 1 if name in ("train img/s", "latency p50 ms") else 3
            row[name + " ± 95% CI"] = mean_ci(r["mean"], r["lo"], r["hi"], digits)
        row["failed trials"] = failed.get(v, 0)
        row["convergence"] = convergence_cell(an, v)
        rows.append(row)
    return table(pd.DataFrame(rows), left=["convergence"]) + f"<p class=note>{CONVERGENCE_RULE}</p>"


def result_section(ctx: PageContext, figs: Figures) -> str:
    an = ctx.an
    h = an.headline()
    if not h:
        return "<h2>Result</h2><p>No finished trials yet.</p>"
    if h["winner"] is None and h["datasets"] > 1:
        parts = [f"<p><b>No winner</b>: the variants trained and were scored on {h['datasets']} different "
                 "datasets, so their APs do not rank against each other; compare variants on the same data "
                 "(the accuracy page, and the leaderboard of every study).</p>"]
    elif h["winner"] is None and h["ahead_improving"]:
        ahead, b = h["ahead_improving"], h["best_settled_ci"]
        verb = ("ranks above every settled variant but is" if len(ahead) == 1
                else "rank above every settled variant but are")
        parts = [f"<p><b>No winner</b>: {esc(', '.join(ahead))} {verb} still improving, so the epoch budget decides "
                 "the ranking as much as the method; train longer to know. The best settled variant is "
                 f"{esc(h['best_settled'])}, AP {mean_ci(b['mean'], b['lo'], b['hi'])}.</p>"]
    elif h["winner"] is None:
        parts = ["<p><b>No winner</b>: every variant is set aside (see the convergence column below).</p>"]
    else:
        w = h["winner_ci"]
        parts = [f"<p><b>Winner: {esc(h['winner'])}</b>, AP {mean_ci(w['mean'], w['lo'], w['hi'])} "
                 f"(mean over {int(w['n'])} seed{'s' if w['n'] != 1 else ''}, 95% t interval).</p>"]
    parts.append(set_aside_text(h["set_aside"], "the winner"))
    if h.get("runner_up"):
        p, b = h["paired"], h["boot"]
        parts.append(f"<p>Runner-up: {esc(h['runner_up'])}; lead {h['lead']:+.4f} AP. {esc(verdict(h))}</p>")
        rows = [{"test": "paired over matching seeds",
                 "winner - runner-up (95% CI)": interval(p["mean"], p["lo"], p["hi"], 4),
                 "detail": esc(f"seeds {p['seeds']}; " + (f"paired t test {stats.fmt_p(p['p'])}"
                               if math.isfinite(p["p"]) and p["n"] >= stats.MIN_SEEDS else h["seed_word"]))}]
        if b:
            rows.append({"test": "bootstrap over val images", "winner - runner-up (95% CI)":
                         interval(h["lead"], b["lo"], b["hi"], 4),
                         "detail": esc(f"winner ahead in {100 * b['p_better']:.0f}% of {b['n']} resamples")})
        else:
            rows.append({"test": "bootstrap over val images", "winner - runner-up (95% CI)": num(None),
                         "detail": esc(f"not available: {an.boot_note}")})
        parts.append(table(pd.DataFrame(rows), left=["detail"]))
        if an.bootstrap() is not None:
            parts.append(f'<p class="note">Bootstrap: {esc(an.boot_note)}.</p>')
        parts.append('<p class="note">The two tests answer different questions: the seed test asks whether the '
                     'lead survives retraining; the image bootstrap asks whether it survives another val set '
                     f'drawn like this one, for these trained models. {esc(RULE)}</p>')
    parts.append("<h3>Variants</h3>" + variants_table(ctx))
    s, pts = an.summary("AP"), ctx.sd.metric("AP")
    parts.append(figs.div(figures.mean_and_points(s, pts, "AP per variant: mean with 95% CI, and each seed", "AP"),
                          height=380))
    return '<h2>Result</h2><div class="box">' + "".join(parts) + "</div>"


def budget_section(ctx: PageContext) -> str:
    """Which variant wins at which latency budget: the speed-accuracy Pareto frontier read as a table.

    Shown when the variants differ in their detector (a swept ``detector.*`` key) and latency was measured.
    """
    sd, an = ctx.sd, ctx.an
    if not any(k.startswith("detector.") for k in sd.swept) or "speed/latency_ms_p50" not in sd.final:
        return ""
    lat, ap = an.summary("speed/latency_ms_p50").set_index("variant"), an.summary("AP").set_index("variant")
    aside = an.set_aside()
    candidates = [v for v in sd.variants if v not in aside]
    means = pd.DataFrame({"variant": candidates, "lat": lat["mean"].reindex(candidates).values,
                          "ap": ap["mean"].reindex(candidates).values}).dropna()
    if len(means) < 2 and not aside:
        return ""
    found = latency_budgets(means) if len(means) else {"budgets": [], "dominated": {}}
    rows, faster = [], None
    for v, lo, hi in found["budgets"]:
        upper = f"{hi:.1f} ms" if hi is not None else "any larger budget"
        row = {"latency budget (p50, batch 1)": esc(f"from {lo:.1f} ms up to {upper}"),
               "best": esc(v) if ap.loc[v, "mean"] >= 0.001 else f"none ({esc(v)} finds nothing)",
               "AP ± 95% CI": mean_ci(ap.loc[v, "mean"], ap.loc[v, "lo"], ap.loc[v, "hi"]),
               "latency ms ± 95% CI": mean_ci(lat.loc[v, "mean"], lat.loc[v, "lo"], lat.loc[v, "hi"], 1)}
        d = an.difference(v, faster, "AP") if faster else None
        row["AP gained over the faster one"] = (interval(d["diff"], d["lo"], d["hi"], 4) + " " + esc(d["why"])
                                                if d else "–")
        rows.append(row)
        faster = v
    dominated = [f"{esc(v)} (behind {esc(by)})" for v, by in found["dominated"].items()]
    out = ("<h2>Which detector wins at which latency budget</h2><p class=note>The Pareto frontier of the variant "
           "means (speed page): each row is the most accurate variant among those no slower than the budget. "
           "Latency is measured by each trial on its own CPU share while another trial may run beside it; its "
           "interval is over seeds. The AP gain is tested as on the rest of this page (seeds and images).</p>"
           + table(pd.DataFrame(rows), left=["latency budget (p50, batch 1)", "AP gained over the faster one"]))
    if dominated:
        out += f"<p>Off the frontier (another variant is both faster and more accurate): {', '.join(dominated)}.</p>"
    return out + set_aside_text(aside, "any budget")


def paper_section(ctx: PageContext, figs: Figures) -> str:
    out = []
    for c in comparisons(ctx.sd, ctx.an.difference):
        t, o = c["table"], c["ordering"]
        unit = "AP (%)" if c["factor"] == 100 else t["metric"]
        head = (f"<h3>{esc(t['paper'])}, {esc(t['source'])}: {esc(t['title'])}</h3>"
                f"<p class=note>{esc(t['citation'])}; {esc(t['setting'])}. Data: dashboards/paper/{esc(t['file'])}. "
                f"Reference: the paper's best matched variant, {esc(c['reference'])}. Our gaps are in our own units; "
                f"relative gaps (% of the reference) compare across the two units.</p>")
        if o:
            held = '<span class="ok">held</span>' if o["held"] else '<span class="no">not held</span>'
            best = '<span class="ok">same</span>' if o["best_held"] else '<span class="no">different</span>'
            head += (f"<p>Ordering {held}: paper {esc(' > '.join(o['paper']))}; ours {esc(' > '.join(o['ours']))} "
                     f"(Kendall tau {o['tau']:.2f}); best variant {best}.</p>")
        rows = []
        for r in c["rows"]:
            mark = r["mark"]
            cls = "ok" if mark == "reproduced" else ("na" if mark in ("reference", "undecided") else "no")
            pg = "–" if mark == "reference" else "close" if t.get("relation") == "close" else (
                f"{r['paper_gap']:+.1f} ({100 * r['paper_rel']:+.1f}%)" if r["paper_gap"] is not None else "–")
            og = "–" if mark == "reference" else (
                interval(r["our_gap"], r["lo"], r["hi"])
                + (f" ({100 * r['our_rel']:+.1f}%)" if math.isfinite(r["our_rel"]) else ""))
            rows.append({"variant": esc(r["variant"]), f"paper {unit}": num(r["paper"], 1), "paper gap": pg,
                         f"ours {unit}": num(r["ours"], 2), "our gap [95% CI]": og,
                         "mark": f'<span class="{cls}">{esc(mark)}</span> <span class="note">{esc(r["why"])}</span>'})
        methods = sorted({r["method"] for r in c["rows"] if r["method"]})
        head += (f"<p class=note>Our CIs: {esc('; '.join(methods) or 'none')}. A row is reproduced only when "
                 f"the seed test (at least {stats.MIN_SEEDS} matching seeds) and, for accuracy, the bootstrap over "
                 f"images both put our gap on the paper's side of 0 (for a gap the paper calls close: both show it "
                 f"within ±{100 * stats.EQUIVALENCE_MARGIN:.1f} AP by TOST); undecided when a test can't tell.</p>")
        out.append(head + table(pd.DataFrame(rows), left=["mark"]))
        if len(c["rows"]) > 1 and t.get("relation") != "close":
            out.append(figs.div(figures.paper_gaps(c["rows"], f"{t['source']}: gap to {c['reference']}, "
                                                              "paper vs ours"), height=380))
    if not out:
        return ""
    return "<h2>Paper comparison</h2>" + "".join(out)


def trials_section(ctx: PageContext) -> str:
    sd = ctx.sd
    ap = dict(zip(sd.final["trial_key"], sd.final["AP"])) if "AP" in sd.final else {}
    rows = [{"trial": esc(t["trial_key"]),
             "status": esc("superseded by a re-run" if t.get("superseded") else t["status"]),
             "AP": num(None if t.get("superseded") else ap.get(t["trial_key"])),
             "duration": _duration(t["duration_s"] or math.nan), "attempts": t["attempts"],
             "MLflow run": ctx.run_link(t["mlflow_run_id"]),
             "error": esc((t["error"] or "")[:200])} for t in sd.trials]
    return (f"<h2>Trials ({len(sd.trials)})</h2>" + table(pd.DataFrame(rows), left=["status", "error"]) +
            f"<p class=note>MLflow links open the study's runs in the MLflow UI while it runs on this machine: "
            f"<code>{esc(ctx.mlflow_ui_command())}</code> (the command <code>python -m platform.run</code> prints "
            f"at the end of a study).</p>")


def build_study_index(ctx: PageContext) -> str:
    figs = Figures("overview")
    pages = (("Accuracy", "accuracy.html"), ("Speed", "speed.html"), ("Loss diagnostics", "loss.html"))
    pages += tuple(p for p in ctx.pages if p == TUNING_PAGE)
    links = " · ".join(f'<a href="{href}">{label}</a>' for label, href in pages)
    body = (f"<h1>{esc(ctx.sd.name)}</h1><p class=lead>{esc(ctx.sd.info.get('description') or '')}</p>"
            f"<p>Pages: {links} · <a href='../index.html'>all studies</a></p>"
            + setup_section(ctx) + result_section(ctx, figs) + budget_section(ctx) + paper_section(ctx, figs)
            + trials_section(ctx))
    path = os.path.join(ctx.study_dir, "index.html")
    ctx.sizes["index.html"] = write_page(path, f"{ctx.sd.name}: overview", ctx.nav("Overview"), body,
                                         ctx.plotly_src, ctx.built, ctx.source())
    ctx.plots["index.html"] = figs.count
    return path


# ------------------------------------------------------------------ all studies

def study_headline(store, name: str) -> Dict[str, Any]:
    """Counts, last run and the winner by mean AP (seed interval only: no bootstrap here)."""
    sd = load_study(store, name)
    an = Analysis(sd)
    an.boot_note = "not computed for the index"
    h = an.headline()
    ends = [t["finished_at"] for t in sd.trials if t["finished_at"]]
    return {"sd": sd, "an": an, "headline": h, "last": max(ends) if ends else sd.info.get("updated_at")}


def build_all_index(store, reports_dir: str, built: str) -> int:
    """Every study with its headline, then the cross-study leaderboard (``dashboards.leaderboard``); each
    study is read from the store once for both."""
    rows, entries = [], []
    studies = store.studies()
    tuning = {tuning_name(store, info["name"]) for info in studies}
    for info in studies:
        if info["name"] in tuning:  # a study's tuning trials: that study's tuning page shows them
            continue
        s = study_headline(store, info["name"])
        sd, h = s["sd"], s["headline"]
        page = os.path.join(reports_dir, info["name"], "index.html")
        href = f'{info["name"]}/index.html' if os.path.exists(page) else None
        name = f'<a href="{esc(href)}">{esc(info["name"])}</a>' if href else esc(info["name"])
        entries.append(LeaderboardEntry(sd, s["an"], href))
        statuses = status_counts(sd.trials)
        if h and h["winner"] is None and h["datasets"] > 1:
            head = f"no winner: variants on {h['datasets']} datasets"
        elif h and h["winner"] is None and h["ahead_improving"]:
            head = f"no winner: {esc(', '.join(h['ahead_improving']))} ahead but still improving"
        elif h and h["winner"] is None:
            head = "no winner: every variant is set aside"
        elif h:
            w = h["winner_ci"]
            head = f"{esc(h['winner'])}: AP {mean_ci(w['mean'], w['lo'], w['hi'])}"
            if h.get("runner_up"):
                head += f"; lead {h['lead']:+.3f} over {esc(h['runner_up'])} ({esc(h['seed_word'])})"
        else:
            head = '<span class="na">no finished trials</span>'
        if h and h["set_aside"]:  # still improving, input-independent or empty (the study page says why)
            head += f"; set aside: {esc(', '.join(h['set_aside']))}"
        rows.append({"study": name, "description": esc(info["description"] or ""),
                     "variants": len(sd.variants),
                     "trials": esc(", ".join(f"{n} {k}" for k, n in sorted(statuses.items()))),
                     "last run": _fmt_time(s["last"]), "headline (winner by mean AP, 95% CI)": head})
    body = ("<h1>detbench studies</h1><p class=lead>Every study in the results store. Each study's page has the "
            "full comparison: a lead counts as significant there only when the seed test and the bootstrap over "
            "images both say so. Below: <a href=\"#leaderboard\">every variant of every study</a>, ranked beside "
            "those trained on the same data with the same budget.</p>"
            + table(pd.DataFrame(rows), left=["description", "trials", "last run",
                                              "headline (winner by mean AP, 95% CI)"])
            + leaderboard_section(entries, store))
    return write_page(os.path.join(reports_dir, "index.html"), "detbench reports", nav((("All studies", "index.html"),),
                                                                                        "All studies"),
                      body, "plotly.min.js", built, "all studies")

