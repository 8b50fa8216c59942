"""Report pages built from the results store alone (static HTML, works offline from file://).

    from dashboards import build_reports
    build_reports(store, "focal_gamma_sweep", "reports")   # -> reports/focal_gamma_sweep/index.html

The page builders (pandas, plotly, scipy) load on first use, so a caller that only
needs ``dashboards.tables`` or ``dashboards.fingerprint`` (a cached ``platform.run``)
does not pay for them.
"""

__all__ = ["build_reports", "build_study"]


def __getattr__(name):
    if name in __all__:
        from dashboards import pages

        return getattr(pages, name)
    raise AttributeError(f"module 'dashboards' has no attribute {name!r}")
