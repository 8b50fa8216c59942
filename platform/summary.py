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


def write_report(store, study) -> Optional[str]:
    """Build the pages; a failure here must not hide results already safe in the store."""
    from dashboards import build_reports

    try:
        path = build_reports(store, study.name, study.output.reports_dir)
    except Exception as exc:  # noqa: BLE001 - reported in one line, the results stay in the store
        print(f"error: building the report failed ({type(exc).__name__}: {exc}); the results are in the "
              f"store, retry with: python -m platform.report {study.source}", file=sys.stderr)
        return None
    shown = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
    print(f"report: {shown}")
    return path
