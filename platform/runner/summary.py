"""The end-of-study terminal table and the call into the report builder."""
from __future__ import annotations

import os
import sys
from typing import Optional

from dashboards.tables import variant_table


def print_summary(store, study) -> None:
    rows = variant_table(store, study.name)
    if not rows:
        print("no finished trials yet")
        return
    header = f"{'variant':<28} {'seeds':>5} {'AP (mean +- sd)':>17} {'AP50':>6} {'train img/s':>11} {'latency ms':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ap = f"{r['AP']:.3f} +- {r['AP_sd']:.3f}"
        print(f"{r['variant']:<28} {r['seeds']:>5} {ap:>17} {r['AP50']:>6.3f} {r['train_img_s']:>11.1f}"
              f" {r['latency_ms']:>10.1f}")


def write_report(store, study, only_if_changed: bool = True) -> Optional[str]:
    """Build the pages, unless ``only_if_changed`` and the pages were built from the same data
    (``dashboards.fingerprint``); a failure here must not hide results already safe in the store."""
    from dashboards.fingerprint import fingerprint, is_current

    reports_dir = study.output.reports_dir
    try:
        if only_if_changed and is_current(reports_dir, study.name, fingerprint(store, study.name)):
            path = os.path.join(reports_dir, study.name, "index.html")
            shown = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
            print(f"report: {shown} (up to date: its data did not change)")
            return path
        from dashboards import build_reports

        path = build_reports(store, study.name, reports_dir)
    except Exception as exc:  # noqa: BLE001 - reported in one line, the results stay in the store
        print(f"error: building the report failed ({type(exc).__name__}: {exc}); the results are in the "
              f"store, retry with: python -m platform.report {study.source}", file=sys.stderr)
        return None
    shown = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
    print(f"report: {shown}")
    return path
