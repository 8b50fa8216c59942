"""Page skeleton, figures and tables as HTML; offline from file:// (no CDN, relative links).

plotly.js is written once as ``<reports_dir>/plotly.min.js`` (from the installed
plotly package) and every page loads it with a relative ``<script src>``; each
figure is a ``<div class="plotly-graph-div">`` that plotly.js turns into a
``.js-plotly-plot`` when it renders (what the browser test counts).
"""
from __future__ import annotations

import html
import math
import os
from typing import Optional, Sequence

import pandas as pd

PLOTLY_JS = "plotly.min.js"
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}

CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:0;color:#222;background:#fff}
main{max-width:1240px;margin:0 auto;padding:0 1.5em 3em}
nav{background:#24292f;padding:.6em 1.5em}nav a{color:#fff;margin-right:1.4em;text-decoration:none}
nav a.here{font-weight:bold;border-bottom:2px solid #fff}
h1{font-size:1.6em;margin:.8em 0 .2em}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
p.lead{color:#555;margin-top:0}.note{color:#666;font-size:.88em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f4f6}td.l,th.l{text-align:left;white-space:normal}
.box{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:.6em 0}
.ok{color:#1a7f37;font-weight:bold}.no{color:#b42318;font-weight:bold}.na{color:#777}.warn{color:#b42318}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.4em 0}
dl.kv dt{color:#555}dl.kv dd{margin:0}
.plotly-graph-div{margin:.4em 0 1em}.tw{overflow-x:auto;max-width:100%}
td .note{font-size:.85em}
"""

SKELETON = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
<script src="{plotly}"></script>
</head><body>
<nav>{nav}</nav>
<main>
{body}
<p class="note">Built {built} from the results store ({source}).</p>
</main></body></html>
"""


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def write_plotly_js(reports_dir: str) -> str:
    """plotly.min.js next to the pages, written when missing or from another plotly version."""
    import plotly
    from plotly.offline import get_plotlyjs

    path = os.path.join(reports_dir, PLOTLY_JS)
    stamp = f"/* plotly.py {plotly.__version__} */\n"
    if os.path.exists(path):
        with open(path) as f:
            if f.readline() == stamp:
                return path
    _atomic_write(path, stamp + get_plotlyjs())
    return path


def _atomic_write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def nav(links: Sequence[tuple], here: str) -> str:
    return "".join(f'<a href="{esc(href)}"{" class=here" if label == here else ""}>{esc(label)}</a>'
                   for label, href in links)


def write_page(path: str, title: str, nav_html: str, body: str, plotly_src: str, built: str, source: str) -> int:
    text = SKELETON.format(title=esc(title), css=CSS, plotly=esc(plotly_src), nav=nav_html, body=body,
                           built=esc(built), source=esc(source))
    _atomic_write(path, text)
    return len(text.encode("utf-8"))


class Figures:
    """Collects a page's figures as divs with stable ids; ``count`` is what the browser should render."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.count = prefix, 0

    def div(self, fig, height: Optional[int] = None) -> str:
        self.count += 1
        if height:
            fig.update_layout(height=height)
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{self.prefix}-{self.count}",
                           config=CONFIG, default_height=f"{fig.layout.height or 420}px", default_width="100%")


def num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '<span class="na">–</span>'
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def mean_ci(mean, lo, hi, digits: int = 3, factor: float = 1.0) -> str:
    """"0.512 ± 0.014" (a symmetric t interval as mean ± half-width); the mean alone without an interval.
    ``factor`` converts units for display (1e-6: parameters in millions)."""
    if mean is None or not math.isfinite(mean):
        return num(None)
    text = f"{mean * factor:.{digits}f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) and hi > lo:
        text += f' <span class="note">± {(hi - lo) / 2 * factor:.{digits}f}</span>'
    return text


def interval(value, lo, hi, digits: int = 2) -> str:
    """"+1.23 [+0.40, +2.10]" for a difference with a (possibly asymmetric) interval."""
    if value is None or not math.isfinite(value):
        return num(None)
    text = f"{value:+.{digits}f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f' <span class="note">[{lo:+.{digits}f}, {hi:+.{digits}f}]</span>'
    return text


def table(df: pd.DataFrame, left: Sequence[str] = ()) -> str:
    """A DataFrame of ready HTML cells (escaped and formatted by the caller) as a table. The first
    column and the ``left`` ones are text (left-aligned), the others numbers (right-aligned)."""
    if df.empty:
        return '<p class="na">none</p>'
    text_cols = {df.columns[0], *left}
    cls = {c: ' class="l"' if c in text_cols else "" for c in df.columns}
    head = "".join(f"<th{cls[c]}>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td{cls[c]}>{'–' if v is None else v}</td>" for c, v in zip(df.columns, row))
                   + "</tr>" for row in df.itertuples(index=False, name=None))
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def kv(pairs: Sequence[tuple]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
