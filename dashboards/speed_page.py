"""The speed page of a study: accuracy against speed and size per variant, where and how the
isolated speed figures were measured, per-image time by stage and training time by phase."""
from __future__ import annotations

from typing import List

import pandas as pd

from dashboards import figures
from dashboards.context import SPEED_METRICS, STAGES, PageContext
from dashboards.data import fmt_value
from dashboards.html import Figures, esc, mean_ci, num, table
from dashboards.overview import set_aside_text
from detectors.evaluation.speed_phase import key_label


def _stages_section(ctx: PageContext, figs: Figures) -> str:
    """Per-image time split into stages (two-stage detectors), and training time split into phases."""
    sd, an = ctx.sd, ctx.an
    out = []
    stages = {label: an.summary(m) for m, label in STAGES if m in sd.final}
    if stages:
        rows = []
        for i, v in enumerate(sd.variants):
            row = {"variant": esc(v)}
            for label, s in stages.items():
                r = s.iloc[i]
                row[f"{label} ms"] = mean_ci(r["mean"], r["lo"], r["hi"], 1)
            total = an.summary("speed/latency_ms_p50").iloc[i]
            row["latency p50 ms"] = mean_ci(total["mean"], total["lo"], total["hi"], 1)
            rows.append(row)
        out += ["<h2>Per-image time by stage (batch 1, median over the latency images)</h2>",
                table(pd.DataFrame(rows)),
                "<p class=note>Proposal time is selective search (computed afresh for every timed image, on the "
                "CPU, outside torch) or the RPN (its head, decoding and NMS); shared features: the conv layers run "
                "once per image (Fast / Faster R-CNN); per-region: everything run per proposal (R-CNN: warping and "
                "the CNN on each crop; Fast / Faster R-CNN: RoI pooling and the box head), classifiers and NMS. "
                "Detection time = shared features + per-region. Medians of each stage need not add up to the "
                "median total. A variant without stages has an empty bar.</p>",
                figs.div(figures.stacked_parts(stages, sd.variants, "Per-image time by stage (mean over seeds of "
                                                                    "the medians)", "ms per image"), height=420)]
    phases = sorted({c for c in sd.final.columns if c.startswith("train/time_s/")})
    if phases:
        parts = {c.split("/", 2)[2]: an.summary(c) for c in phases}
        if "train/time_s" in sd.final:  # single-phase variants: their total, as one segment
            single = an.summary("train/time_s")
            single["mean"] = single["mean"].where(~single["variant"].isin(_multi_phase(sd)))
            parts["(one phase)"] = single
        out += ["<h2>Training wall time by phase</h2>",
                "<p class=note>Seconds in each phase's training epochs (evaluations excluded).</p>",
                figs.div(figures.stacked_parts(parts, sd.variants, "Training time by phase (mean over seeds)",
                                               "seconds"), height=420)]
    return "".join(out)


def _multi_phase(sd) -> List[str]:
    cols = [c for c in sd.final.columns if c.startswith("train/time_s/")]
    has = sd.final[cols].notna().any(axis=1) if cols else pd.Series(False, index=sd.final.index)
    return sorted(set(sd.final.loc[has, "variant"]))


# Speed figures left out of the speed page's table (it would not fit the page); the figure has them.
TABLE_SKIPS = ("speed/latency_ms_p95", "speed/throughput_img_s", "speed/peak_rss_mb")


def build_speed(ctx: PageContext) -> str:
    sd, an, figs = ctx.sd, ctx.an, Figures("speed")
    present = [(m, label) for m, label in SPEED_METRICS if m in sd.final]
    summaries = {label: an.summary(m) for m, label in present}
    plotted = {label: (s.assign(**{c: s[c] * 1e-6 for c in ("mean", "lo", "hi", "half")})
                       if m == "speed/params" else s) for (m, label), s in zip(present, summaries.values())}
    means = pd.DataFrame({"variant": sd.variants})
    for m in ("speed/latency_ms_p50", "AP"):
        s = an.summary(m)
        means[m], means[f"{m}_half"] = s["mean"].values, s["half"].fillna(0.0).values
    aside = an.set_aside()  # still improving, input-independent or empty: no candidates for the frontier
    candidates = means[~means["variant"].isin(aside)].dropna()
    front = set(figures.pareto_front(candidates, "speed/latency_ms_p50", "AP")) if sd.variants else set()
    accuracy = {m: an.summary(m) for m in ("AP", "AP50", "APs") if m in sd.final}
    rows = []
    for i, v in enumerate(sd.variants):
        row = {"variant": esc(v), "seeds": len(sd.seeds(v))}
        for m, s in accuracy.items():
            row[m] = mean_ci(s.iloc[i]["mean"], s.iloc[i]["lo"], s.iloc[i]["hi"])
        for m, label in present:
            if m in TABLE_SKIPS:
                continue
            r = summaries[label].iloc[i]
            digits, factor = {"speed/params": (3, 1e-6), "speed/gflops": (3, 1.0)}.get(m, (1, 1.0))
            row[label] = mean_ci(r["mean"], r["lo"], r["hi"], digits, factor)
        row["Pareto"] = "✓" if v in front else ("set aside" if v in aside else "")
        rows.append(row)
    threads = sd.final["speed/threads"].dropna().unique() if "speed/threads" in sd.final else []
    skipped = ", ".join(label for m, label in present if m in TABLE_SKIPS)
    skipped_note = f" {esc(skipped)}: in the figure below." if skipped else ""
    isolated, measured = _isolated_speed_section(ctx)
    if measured:
        note = ("<p class=note>Latency, throughput and <i>train img/s alone</i> are the isolated measurement of "
                "each variant's speed configuration (next section), shared by every trial of that configuration, "
                "so they carry no interval over seeds. <i>train img/s</i> is each trial's own training throughput "
                "and <i>peak RSS</i> its worker's peak resident set size, both taken while trials ran side by side "
                "(compare with care). FLOPs from torch.utils.flop_counter. Pareto: on the frontier of the variant "
                "means (lower latency p50, higher AP)." + skipped_note + "</p>")
    else:
        note = (f"<p class=note>Measured by each worker on its own CPU share "
                f"({esc(', '.join(fmt_value(t) for t in threads) or '?')} thread(s)); latency is per image at "
                "batch 1, throughput at the study's speed batch size, FLOPs from torch.utils.flop_counter, peak "
                "memory is the worker's resident set size. Trials that ran side by side share the machine: compare "
                "with care. Pareto: on the frontier of the variant means (lower latency p50, higher AP)."
                + skipped_note + "</p>")
    parts = ["<h2>Accuracy, speed and size (mean over seeds ± 95% CI half-width)</h2>", table(pd.DataFrame(rows)), note,
             set_aside_text(aside, "the frontier (the overview's convergence column says why)"), isolated]
    if present:
        parts.append(figs.div(figures.small_multiples(plotted, sd.variants, "Speed figures per variant (95% CI)")))
    parts.append(_stages_section(ctx, figs))
    if sd.variants and "AP" in sd.final and "speed/latency_ms_p50" in sd.final:
        parts.append("<h2>Speed against accuracy</h2>")
        parts.append(figs.div(figures.speed_accuracy(means, sd.final, "speed/latency_ms_p50", "AP",
                                                     "latency p50 (ms)", "AP", sd.variants, aside), height=460))
    return ctx.write("speed.html", "Speed", "".join(parts), figs)


def _isolated_speed_section(ctx: PageContext):
    """Where and how the isolated speed figures were measured (``detectors.evaluation.speed_phase``): one row per
    speed configuration with its hardware. Returns (html, whether any figure is stored)."""
    sd = ctx.sd
    keys = sd.data("speed_key")
    measured = sd.speed_figures(set(keys.values())) if keys else {}
    if not measured:
        return "", False
    rows, machines = [], []
    for digest, m in measured.items():
        f, hw, how = m["figures"], m["hardware"], m["method"]
        trials = [t for t in sd.finished if keys.get(t["trial_key"]) == digest]
        variants = list(dict.fromkeys(t["variant"] for t in trials))
        spread = {k: f.get(f"{k}_spread") for k in ("throughput_img_s", "train_img_s")}
        rows.append({
            "configuration": esc(key_label(m["key"])),
            "trials (variants)": f"{len(trials)} ({esc(', '.join(variants))})",
            "latency p50 / p95 ms": f"{num(f.get('latency_ms_p50'), 2)} / {num(f.get('latency_ms_p95'), 2)}",
            "throughput img/s": _with_spread(f.get("throughput_img_s"), spread["throughput_img_s"]),
            "train img/s": _with_spread(f.get("train_img_s"), spread["train_img_s"]),
            "peak RSS MB": num(f.get("peak_rss_mb"), 0) + (f" (GPU {num(f['peak_gpu_mb'], 0)})"
                                                         if f.get("peak_gpu_mb") is not None else ""),
            "params M": num(f["params"] * 1e-6 if f.get("params") is not None else None),
            "GFLOPs/img": num(f.get("gflops")),
            "measured on": esc(f"{hw.get('cpu')}, {hw.get('cpu_cores')} cores"
                               + (f", {hw['gpu']}" if hw.get("gpu") else "")
                               + f"; torch {hw.get('torch')}" + (f", CUDA {hw['cuda']}" if hw.get("cuda") else "")
                               + f"; host {hw.get('host')}"),
            "when": esc(str(m["measured_at"])[:16]),
        })
        machines.append(how)
    how = machines[0]
    loads = ", ".join(f"{h.get('load_avg_before')} / {h.get('load_avg_after')}" for h in machines)
    text = (f"<h2>Where and how speed was measured</h2><p class=note>After training, once per speed configuration "
            f"(architecture, scale, parameters, val images, batch size, threads, device, precision, memory format, "
            f"post-processing; not the loss or the seed), by a Ray task that held every CPU of its node (and a GPU "
            f"on CUDA), so no trial ran beside it. The {esc(how.get('weights'))} weights of one trial of the "
            f"configuration were timed with the trial's {esc(how.get('threads'))} thread(s) at "
            f"{esc(how.get('precision'))}: latency per image at batch 1 over {esc(how.get('latency_images'))} images "
            f"after {esc(how.get('warmup_images'))} warm-up images (p50 / p95; pre- and post-processing included); "
            f"throughput over {esc(how.get('throughput'))} and training speed over {esc(how.get('train'))}, each "
            f"timed {esc(how.get('repeats'))} times (median, ± half the range). Timer: {esc(how.get('timer'))}. "
            f"The node's 1-minute load average before / after: {esc(loads)} (about the CPU count or more means "
            f"something outside this study was running too).</p>")
    return text + table(pd.DataFrame(rows), left=["trials (variants)", "measured on"]), True


def _with_spread(value, spread) -> str:
    if value is None:
        return num(None)
    text = num(value, 1)
    if spread:
        text += f' <span class="note">± {spread / 2:.1f}</span>'
    return text
