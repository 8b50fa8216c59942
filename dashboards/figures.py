"""Plotly figures of one study. Each function takes prepared data and returns a ``go.Figure``.

Colours follow the sweep order, so a variant has the same colour on every page.
Means carry 95% t intervals over seeds as error bars; single trials are the
small grey points.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

PALETTE = qualitative.D3 + qualitative.Set2
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family="DejaVu Sans, sans-serif", size=12), paper_bgcolor="white", plot_bgcolor="#fbfbfc",
    colorway=PALETTE, margin=dict(l=60, r=20, t=70, b=50), hovermode="closest",
    xaxis=dict(gridcolor="#e6e6e6", zeroline=False, automargin=True),
    yaxis=dict(gridcolor="#e6e6e6", zeroline=False, automargin=True),
    legend=dict(bgcolor="rgba(255,255,255,0.7)")))


def colors(variants: Sequence[str]) -> Dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def _fig(title: str, **layout) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=dict(text=title, x=0.01), **layout)
    return fig


def _err(s: pd.DataFrame) -> dict:
    half = s["half"].where(np.isfinite(s["half"]), 0.0)
    return dict(type="data", array=half.tolist(), visible=True, thickness=1.5, width=6)


def mean_and_points(summary: pd.DataFrame, points: pd.DataFrame, title: str, ytitle: str,
                    cols: Optional[Dict[str, str]] = None) -> go.Figure:
    """Per-variant mean with CI error bars, and each seed as a point (the index page's AP chart)."""
    fig = _fig(title, yaxis_title=ytitle, showlegend=True)
    cols = cols or colors(summary["variant"])
    fig.add_bar(x=summary["variant"], y=summary["mean"], error_y=_err(summary), name="mean (95% CI)",
                marker_color=[cols[v] for v in summary["variant"]],
                opacity=0.75, hovertemplate="%{x}<br>mean %{y:.4f}<extra></extra>")
    fig.add_scatter(x=points["variant"], y=points["value"], mode="markers", name="seed",
                    marker=dict(color="#333", size=7, symbol="circle-open"),
                    text=[f"seed {s}" for s in points["seed"]], hovertemplate="%{x}, %{text}: %{y:.4f}<extra></extra>")
    return fig


def metric_bars(summaries: Dict[str, pd.DataFrame], variants: Sequence[str],
                title: str = "COCO metrics per variant (mean over seeds, 95% CI)", ytitle: str = "value") -> go.Figure:
    """Grouped bars: one group per metric (AP, AP50, ...), one bar per variant, CI error bars."""
    fig = _fig(title, yaxis_title=ytitle, barmode="group")
    cols = colors(variants)
    for v in variants:
        rows = [s[s["variant"] == v].iloc[0] if (s["variant"] == v).any() else None for s in summaries.values()]
        means = [r["mean"] if r is not None else None for r in rows]
        halves = [r["half"] if r is not None and math.isfinite(r["half"]) else 0.0 for r in rows]
        fig.add_bar(x=list(summaries), y=means, name=v, marker_color=cols[v],
                    error_y=dict(type="data", array=halves, visible=True, thickness=1.2, width=3))
    return fig


def swept_param(points: pd.DataFrame, summary: pd.DataFrame, xs: Dict[str, object], xname: str,
                ytitle: str, numeric: bool) -> go.Figure:
    """The swept parameter against AP: each seed a point, the mean a line with CI bars."""
    fig = _fig(f"{xname} against {ytitle}", xaxis_title=xname, yaxis_title=ytitle)
    s = summary.assign(x=summary["variant"].map(xs))
    if numeric:
        s = s.sort_values("x")
    fig.add_scatter(x=s["x"], y=s["mean"], mode="lines+markers", name="mean (95% CI)", error_y=_err(s),
                    line=dict(color="#1f77b4", width=2), marker=dict(size=9), text=s["variant"],
                    hovertemplate="%{text}<br>mean %{y:.4f}<extra></extra>")
    p = points.assign(x=points["variant"].map(xs))
    fig.add_scatter(x=p["x"], y=p["value"], mode="markers", name="seed",
                    marker=dict(color="#555", size=8, symbol="x-thin", line=dict(width=2, color="#555")),
                    text=[f"{v}, seed {sd}" for v, sd in zip(p["variant"], p["seed"])],
                    hovertemplate="%{text}: %{y:.4f}<extra></extra>")
    if numeric:
        fig.update_xaxes(tickvals=sorted(set(s["x"])))
    return fig


def heatmap(matrix: pd.DataFrame, title: str) -> go.Figure:
    """Variants (rows) x classes (columns), values annotated; empty cells are classes without ground truth."""
    z = matrix.to_numpy(dtype=float)
    text = [[("" if not math.isfinite(x) else f"{x:.3f}") for x in row] for row in z]
    fig = _fig(title, xaxis_title="class", yaxis=dict(autorange="reversed", title="variant"))
    fig.add_heatmap(z=z, x=list(matrix.columns), y=list(matrix.index), text=text, texttemplate="%{text}",
                    colorscale="Viridis", colorbar=dict(title="AP"), hoverongaps=False,
                    hovertemplate="%{y}<br>%{x}: %{z:.4f}<extra></extra>")
    fig.update_layout(height=max(300, 90 + 45 * len(matrix.index)))
    return fig


def confusion(matrices: Dict[str, pd.DataFrame], counts: Dict[str, pd.DataFrame], variants: Sequence[str]) -> go.Figure:
    """Row-normalised confusion matrices (true class rows, detected class columns), one per variant;
    a menu picks the variant. ``counts`` (same shape) show in the hover."""
    fig = _fig("Confusion between classes (share of each true class's row; seeds pooled)",
               xaxis=dict(title="detected as", side="bottom"), yaxis=dict(title="true class", autorange="reversed"))
    shown = [v for v in variants if v in matrices]
    for v in shown:
        m, c = matrices[v], counts[v]
        fig.add_heatmap(z=m.to_numpy(dtype=float), x=list(m.columns), y=list(m.index), colorscale="Blues",
                        zmin=0, zmax=1, customdata=c.to_numpy(),
                        text=[[f"{x:.2f}" for x in row] for row in m.to_numpy()],
                        texttemplate="%{text}", visible=(v == shown[0]), name=v, showscale=(v == shown[0]),
                        hovertemplate="true %{y}, detected as %{x}: %{z:.3f} (%{customdata})<extra>" + v + "</extra>")
    buttons = [dict(label=v, method="update", args=[{"visible": [t.name == v for t in fig.data]}]) for v in shown]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.15, yanchor="top",
                                        showactive=True)], height=480)
    return fig


def pr_curves(recall: List[float], curves: Dict[str, Dict[str, List[float]]], iou: str,
              variants: Sequence[str]) -> go.Figure:
    """Precision over recall per variant; a menu picks the class ("mean" = mean over classes).

    ``curves``: variant -> {class or "mean": [101 precisions]}.
    """
    fig = _fig(f"Precision-recall at IoU {iou} (COCOeval precision, mean over seeds)",
               xaxis=dict(title="recall", range=[0, 1]), yaxis=dict(title="precision", range=[0, 1.02]))
    cols = colors(variants)
    classes = list(dict.fromkeys(c for v in variants for c in curves.get(v, {})))
    for c in classes:
        for v in variants:
            if c in curves.get(v, {}):
                fig.add_scatter(x=recall, y=curves[v][c], mode="lines", name=v, legendgroup=v,
                                line=dict(color=cols[v], width=2), visible=(c == "mean"),
                                meta=c,
                                hovertemplate=f"{v}<br>recall %{{x:.2f}}: precision %{{y:.3f}}<extra>{c}</extra>")
    buttons = [dict(label=c, method="update", args=[{"visible": [t.meta == c for t in fig.data]}])
               for c in classes]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.15, yanchor="top",
                                        showactive=True)])
    return fig


def epoch_curves(epochs: pd.DataFrame, names: Sequence[str], variants: Sequence[str], title: str,
                 x: str = "epoch", ncols: int = 3) -> go.Figure:
    """Per-epoch metrics (mean over seeds) per variant, one panel per metric name, ``ncols`` panels a row."""
    ncols = max(1, min(ncols, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=list(names), horizontal_spacing=0.08,
                        vertical_spacing=0.3 / nrows if nrows > 1 else 0.1)
    fig.update_layout(template=TEMPLATE, title=dict(text=title, x=0.01), height=300 * nrows + 80)
    cols = colors(variants)
    for j, name in enumerate(names):
        row, col = j // ncols + 1, j % ncols + 1
        df = epochs[epochs["name"] == name]
        for v in variants:
            d = df[df["variant"] == v].groupby(x)["value"].mean().reset_index()
            if d.empty:
                continue
            fig.add_scatter(x=d[x], y=d["value"], mode="lines+markers", name=v, legendgroup=v,
                            showlegend=v not in {t.name for t in fig.data}, line=dict(color=cols[v]),
                            marker=dict(size=4), row=row, col=col,
                            hovertemplate=f"{v}<br>{x} %{{x}}: %{{y:.4f}}<extra></extra>")
        fig.update_xaxes(title_text=x, row=row, col=col,
                         dtick=1 if x == "epoch" and df[x].nunique() <= 20 else None)
    return fig


def budget_curves(curves: pd.DataFrame, variants: Sequence[str], title: str, ytitle: str = "val AP") -> go.Figure:
    """Per variant the mean over seeds at each epoch with its 95% t interval as a band (``dashboards.budget.
    epoch_curves`` rows); an epoch with one seed has the mean alone."""
    fig = _fig(title, xaxis_title="epoch (budget)", yaxis_title=ytitle)
    cols = colors(variants)
    for v in variants:
        d = curves[curves["variant"] == v].sort_values("epoch")
        if d.empty:
            continue
        band = d[np.isfinite(d["lo"].astype(float)) & np.isfinite(d["hi"].astype(float))]
        if len(band):  # a closed polygon: the upper ends left to right, the lower ends back
            fig.add_scatter(x=band["epoch"].tolist() + band["epoch"].tolist()[::-1],
                            y=band["hi"].tolist() + band["lo"].tolist()[::-1], fill="toself", mode="lines",
                            line=dict(width=0), fillcolor=cols[v], opacity=0.18, legendgroup=v, showlegend=False,
                            hoverinfo="skip", name=f"{v} 95% CI")
        fig.add_scatter(x=d["epoch"], y=d["mean"], mode="lines+markers", name=v, legendgroup=v,
                        line=dict(color=cols[v]), marker=dict(size=5), customdata=d[["lo", "hi", "n"]].values,
                        hovertemplate=f"{v}<br>epoch %{{x}}: %{{y:.4f}} [%{{customdata[0]:.4f}}, "
                                      f"%{{customdata[1]:.4f}}], %{{customdata[2]}} seeds<extra></extra>")
    fig.update_xaxes(dtick=1 if curves["epoch"].nunique() <= 20 else None)
    return fig


def small_multiples(summaries: Dict[str, pd.DataFrame], variants: Sequence[str], title: str,
                    ncols: int = 4) -> go.Figure:
    """One bar panel per metric (speed figures), mean over seeds with CI error bars."""
    names = list(summaries)
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=names, vertical_spacing=0.22 if nrows > 1 else 0.1)
    fig.update_layout(template=TEMPLATE, title=dict(text=title, x=0.01), showlegend=False,
                      height=300 * nrows + 60)
    cols = colors(variants)
    for i, name in enumerate(names):
        s = summaries[name]
        fig.add_bar(x=s["variant"], y=s["mean"], error_y=_err(s), marker_color=[cols[v] for v in s["variant"]],
                    row=i // ncols + 1, col=i % ncols + 1, hovertemplate="%{x}: %{y:.4g}<extra></extra>")
    fig.update_xaxes(showticklabels=len(variants) <= 6, tickangle=-30)
    return fig


def stacked_parts(parts: Dict[str, pd.DataFrame], variants: Sequence[str], title: str, ytitle: str,
                  note: Optional[Dict[str, str]] = None) -> go.Figure:
    """One stacked bar per variant: each part's mean over seeds (e.g. inference time split into
    proposals / features / regions, or training time per phase); ``parts`` maps a part's label to
    its ``Analysis.summary`` frame. A variant without a part simply has no segment for it."""
    fig = _fig(title, yaxis_title=ytitle, barmode="stack", legend=dict(orientation="h", y=-0.25))
    for i, (label, s) in enumerate(parts.items()):
        s = s.set_index("variant").reindex(list(variants))
        fig.add_bar(x=list(variants), y=s["mean"].tolist(), name=label, marker_color=PALETTE[i % len(PALETTE)],
                    hovertemplate="%{x}: " + label + " %{y:.4g}" + (note or {}).get(label, "") + "<extra></extra>")
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> List[str]:
    """Variants no other variant beats on both (lower x, higher y), in x order."""
    front, best = [], -math.inf
    for _, r in points.sort_values([x, y], ascending=[True, False]).iterrows():
        if r[y] > best:
            front.append(r["variant"])
            best = r[y]
    return front


def speed_accuracy(means: pd.DataFrame, trials: pd.DataFrame, x: str, y: str, xtitle: str, ytitle: str,
                   variants: Sequence[str], set_aside: Sequence[str] = ()) -> go.Figure:
    """Speed against accuracy: variant means (large; stars on the Pareto frontier of the means), each
    trial (small grey points: the spread over seeds), and the frontier as a step line. ``set_aside``
    variants (``Analysis.set_aside``) are drawn as crosses and left out of the frontier."""
    fig = _fig(f"{ytitle} against {xtitle} (Pareto frontier: lower {xtitle}, higher {ytitle})",
               xaxis_title=xtitle, yaxis_title=ytitle)
    cols = colors(variants)
    fig.add_scatter(x=trials[x], y=trials[y], mode="markers", name="trial", hoverinfo="text",
                    text=trials["trial_key"], marker=dict(color="#bbb", size=6))
    front = pareto_front(means[~means["variant"].isin(list(set_aside))].dropna(subset=[x, y]), x, y)
    f = means.set_index("variant").loc[front]
    fig.add_scatter(x=f[x], y=f[y], mode="lines", name="Pareto frontier", line=dict(color="#444", dash="dash",
                    shape="hv", width=1.5), hoverinfo="skip")
    for _, r in means.iterrows():
        fig.add_scatter(x=[r[x]], y=[r[y]], mode="markers+text", name=r["variant"], text=[r["variant"]],
                        textposition="top center", textfont=dict(size=11, color=cols[r["variant"]]),
                        marker=dict(color=cols[r["variant"]], size=12,
                                    symbol="star" if r["variant"] in front else
                                    "x" if r["variant"] in set_aside else "circle"),
                        hovertemplate=f"{r['variant']}<br>{xtitle} %{{x:.3g}}<br>{ytitle} %{{y:.4f}}"
                                      + ("<br>set aside" if r["variant"] in set_aside else "") + "<extra></extra>")
    return fig


def loss_cdf(curves: Dict[str, Dict[str, Dict[str, List[float]]]], variants: Sequence[str],
             label: Dict[str, str], cols: Optional[Dict[str, str]] = None) -> go.Figure:
    """Focal loss paper Fig. 4: cumulative normalised loss against the fraction of anchors (sorted by loss),
    positives and negatives side by side.
    ``curves``: variant -> {"positive"|"negative": {fraction, cumulative_loss}}."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["positive anchors", "negative anchors"],
                        horizontal_spacing=0.08)
    fig.update_layout(template=TEMPLATE, legend_title_text="variant",
                      title=dict(text="Cumulative normalised classification loss on the val split", x=0.01))
    cols = cols or colors(variants)
    for j, part in enumerate(("positive", "negative"), start=1):
        for v in variants:
            c = curves.get(v, {}).get(part)
            if not c:
                continue
            fig.add_scatter(x=c["fraction"], y=c["cumulative_loss"], mode="lines", name=label.get(v, v),
                            legendgroup=v, showlegend=(j == 1), line=dict(color=cols[v], width=2), row=1, col=j,
                            hovertemplate=(f"{label.get(v, v)}<br>%{{x:.2f}} of anchors: %{{y:.3f}} of loss"
                                           "<extra></extra>"))
        fig.update_xaxes(title_text="fraction of anchors (sorted by loss)", range=[0, 1], row=1, col=j)
        fig.update_yaxes(title_text="cumulative normalised loss", range=[0, 1.02], row=1, col=j)
    zoom = [dict(label=text, method="relayout", args=[{"xaxis.range": r, "xaxis2.range": r}])
            for text, r in (("all anchors", [0, 1]), ("hardest 10%", [0.9, 1]))]
    fig.update_layout(updatemenus=[dict(type="buttons", direction="right", buttons=zoom, x=1.0, xanchor="right",
                                        y=1.16, yanchor="bottom", showactive=True)])
    return fig


def paper_gaps(rows: List[dict], title: str) -> go.Figure:
    """Gap to the paper's best variant, relative to it (%): paper vs ours with our 95% CI."""
    rows = [r for r in rows if r["mark"] != "reference"]
    fig = _fig(title, yaxis_title="gap to the reference, % of its value", barmode="group")
    x = [r["variant"] for r in rows]
    paper = [None if r["paper_rel"] is None else 100 * r["paper_rel"] for r in rows]
    ours = [100 * r["our_rel"] for r in rows]
    ref_ours = [r["ours"] - r["our_gap"] for r in rows]
    hi = [100 * (r["hi"] - r["our_gap"]) / o if o and math.isfinite(r["hi"]) else 0 for r, o in zip(rows, ref_ours)]
    lo = [100 * (r["our_gap"] - r["lo"]) / o if o and math.isfinite(r["lo"]) else 0 for r, o in zip(rows, ref_ours)]
    fig.add_bar(x=x, y=paper, name="paper", marker_color="#9aa5b1")
    fig.add_bar(x=x, y=ours, name="ours (95% CI)", marker_color="#1f77b4",
                error_y=dict(type="data", array=hi, arrayminus=lo, visible=True, thickness=1.5, width=5))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    return fig


def score_vs_iou(points: Dict[str, Dict[str, List[float]]], variants: Sequence[str], max_points: int = 1500,
                 cols: Optional[Dict[str, str]] = None) -> go.Figure:
    """GFL paper sec. 1 / Fig. 2: predicted score against the IoU of the box with its matched ground truth,
    one point per positive (a fixed subsample of at most ``max_points`` per variant); the diagonal is agreement."""
    fig = _fig("Predicted score against IoU with the matched ground truth (val positives)",
               xaxis=dict(title="IoU with the matched ground truth", range=[0, 1]),
               yaxis=dict(title="predicted score", range=[0, 1.02]))
    cols = cols or colors(variants)
    rng = np.random.default_rng(0)
    for v in variants:
        iou, score = np.asarray(points[v]["iou"], float), np.asarray(points[v]["score"], float)
        if iou.size > max_points:
            keep = np.sort(rng.choice(iou.size, max_points, replace=False))
            iou, score = iou[keep], score[keep]
        fig.add_scattergl(x=iou.round(4), y=score.round(4), mode="markers", name=v,
                          marker=dict(color=cols[v], size=4, opacity=0.45))
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="score = IoU", line=dict(color="#444", dash="dot"))
    return fig


def _rgba(color: str, alpha: float) -> str:
    """A palette colour ("#1f77b4" or "rgb(102,194,165)") with transparency."""
    from plotly.colors import hex_to_rgb, unlabel_rgb

    r, g, b = hex_to_rgb(color) if color.startswith("#") else unlabel_rgb(color)
    return f"rgba({r:g},{g:g},{b:g},{alpha})"


def tuning_scores(samples: pd.DataFrame, keys: Sequence[str], log_keys: Sequence[str], variants: Sequence[str],
                  ranges: Optional[Dict[str, tuple]] = None, ncols: int = 3) -> go.Figure:
    """Tuning score against each searched key, one panel per key (log x axis for log-scale keys), one colour per
    variant; samples stopped early are hollow. ``samples``: variant, sample, score, stopped_early and one column
    per key (``dashboards.tuning.samples_frame``); ``ranges``: key -> (low, high), the span of its x axis (a
    little wider), so a sample at an end of the search range shows there."""
    ncols = max(1, min(ncols, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=list(keys), horizontal_spacing=0.08,
                        vertical_spacing=0.3 / nrows if nrows > 1 else 0.1)
    fig.update_layout(template=TEMPLATE, height=360 * nrows + 60,
                      title=dict(text="Tuning score against each searched value (hollow: stopped early)", x=0.01))
    cols = colors(variants)
    for j, key in enumerate(keys):
        row, col = j // ncols + 1, j % ncols + 1
        for v in variants:
            d = samples[(samples["variant"] == v) & samples[key].notna()]
            fig.add_scatter(x=d[key], y=d["score"], mode="markers", name=v, legendgroup=v, showlegend=j == 0,
                            marker=dict(color=cols[v], size=9, line=dict(color=cols[v], width=2),
                                        symbol=["circle-open" if s else "circle" for s in d["stopped_early"]]),
                            text=[f"sample {s}" + (", stopped early" if e else "")
                                  for s, e in zip(d["sample"], d["stopped_early"])], row=row, col=col,
                            hovertemplate=f"{v}<br>%{{text}}<br>{key} %{{x:.4g}}: %{{y:.4f}}<extra></extra>")
        log = key in log_keys
        span = None
        if key in (ranges or {}):
            lo, hi = (math.log10(x) for x in ranges[key]) if log else ranges[key]
            span = [lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)]  # plotly gives a log axis's range in log10 units
        fig.update_xaxes(title_text=key, type="log" if log else "linear", range=span, row=row, col=col)
        fig.update_yaxes(title_text="tuning score" if col == 1 else None, row=row, col=col)
    return fig


def tuning_curve(best: Dict[str, tuple], variants: Sequence[str]) -> go.Figure:
    """The best tuning score so far against the sample index, per variant. ``best``: variant -> (sample indices,
    best score among the samples up to each)."""
    fig = _fig("Tuning curve: best score so far", xaxis_title="sample (order created, from 0)",
               yaxis_title="best tuning score so far")
    cols = colors(variants)
    for v in variants:
        x, y = best.get(v, ([], []))
        fig.add_scatter(x=x, y=y, mode="lines+markers", name=v, line=dict(color=cols[v], shape="hv"),
                        hovertemplate=f"{v}<br>after sample %{{x}}: %{{y:.4f}}<extra></extra>")
    return fig


def expected_max(curves: Dict[str, Sequence[float]], bands: Dict[str, tuple], variants: Sequence[str]) -> go.Figure:
    """Expected best tuning score against the number of samples n = 1..N per variant (Dodge et al. 2019), with a
    shaded band. ``curves``: variant -> E[max] at n = 1..N; ``bands``: variant -> (lower, upper) at the same n."""
    fig = _fig("Expected best tuning score after n samples (±1 sd)", xaxis_title="samples n",
               yaxis_title="expected best tuning score")
    cols = colors(variants)
    for v in variants:
        if v not in curves:
            continue
        n = list(range(1, len(curves[v]) + 1))
        lo, hi = bands[v]
        fig.add_scatter(x=n, y=list(hi), mode="lines", line=dict(width=0), legendgroup=v, showlegend=False,
                        hoverinfo="skip")
        fig.add_scatter(x=n, y=list(lo), mode="lines", line=dict(width=0), fill="tonexty",
                        fillcolor=_rgba(cols[v], 0.18), legendgroup=v, showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=n, y=list(curves[v]), mode="lines+markers", name=v, legendgroup=v,
                        line=dict(color=cols[v], width=2),
                        hovertemplate=f"{v}<br>n = %{{x}}: %{{y:.4f}}<extra></extra>")
    return fig
