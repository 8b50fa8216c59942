"""Report pages built from the results store alone (static HTML, works offline)."""
from dashboards.pages import build_reports

__all__ = ["build_reports"]
