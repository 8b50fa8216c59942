"""Static report pages: ``reports/<study>/index.html`` and ``reports/index.html``.

Pages read only the results store, so they can be rebuilt at any time with
``python -m platform.report STUDY``.
"""
from __future__ import annotations

import html
import os
from typing import List

import pandas as pd

from dashboards.tables import variant_table

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}</style>
</head><body>{body}</body></html>"""


def _write(path: str, title: str, body: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(PAGE.format(title=html.escape(title), body=body))
    os.replace(tmp, path)


def trials_frame(store, study_name: str) -> pd.DataFrame:
    rows = store.final_metrics(study_name)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).pivot_table(index=["variant", "trial_key", "seed"], columns="name", values="value")
    return df.reset_index()


def build_study_page(store, study_name: str, reports_dir: str) -> str:
    rows: List[dict] = variant_table(store, study_name)
    trials = store.trials(study_name)
    body = [f"<h1>{html.escape(study_name)}</h1>", "<h2>Variants (mean over seeds)</h2>",
            pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3f}") if rows else "<p>no results</p>",
            "<h2>Trials</h2>",
            pd.DataFrame([{k: t.get(k) for k in ("trial_key", "status", "duration_s", "mlflow_run_id", "error")}
                          for t in trials]).to_html(index=False) if trials else "<p>no trials</p>"]
    path = os.path.join(reports_dir, study_name, "index.html")
    _write(path, study_name, "\n".join(body))
    return path


def build_index(store, reports_dir: str) -> str:
    items = "".join(f'<li><a href="{html.escape(s["name"])}/index.html">{html.escape(s["name"])}</a></li>'
                    for s in store.studies())
    path = os.path.join(reports_dir, "index.html")
    _write(path, "detbench reports", f"<h1>detbench studies</h1><ul>{items}</ul>")
    return path


def build_reports(store, study_name: str, reports_dir: str) -> str:
    path = build_study_page(store, study_name, reports_dir)
    build_index(store, reports_dir)
    return path
