"""Report pages built from the results store alone (static HTML, works offline from file://).

    from dashboards import build_reports
    build_reports(store, "focal_gamma_sweep", "reports")   # -> reports/focal_gamma_sweep/index.html
"""
from dashboards.pages import build_reports, build_study

__all__ = ["build_reports", "build_study"]
