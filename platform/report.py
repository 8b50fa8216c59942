"""``python -m platform.report STUDY``: rebuild a study's report pages from the results store.

STUDY is a study file (its store and reports directory come from the file) or
a study name (store ``runs/results.db`` and ``reports/`` under the current
directory unless ``--store`` / ``--reports-dir`` say otherwise). Nothing is
trained and nothing is written to the store (it is opened read-only).
``platform.run`` builds the same pages when a study ends.

exit codes: 0 pages written, 2 unknown study, unreadable store or bad study file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

EPILOG = """\
pages (under REPORTS_DIR/<study>/; open index.html in a browser, no server needed):
  index.html     what was compared, variants with 95% CIs, the winner and whether its lead
                 is significant, the paper comparison where a paper table matches, trials
                 with links to their MLflow runs (the links work while `mlflow ui` runs)
  accuracy.html  COCO metrics, swept parameter vs AP, per-class AP, PR curves
  speed.html     speed and size figures, speed-accuracy scatter with the Pareto frontier
  loss.html      training losses; loss diagnostics (focal loss paper, Fig. 4) where stored
  tuning.html    with sweep.tune: each variant's search, chosen values, expected best AP after n samples
  gallery.html   val images with the ground truth and each variant's detections (images on disk)
REPORTS_DIR/index.html lists every study in the store.

examples:
  python -m platform.report studies/focal_gamma_sweep.yaml
  python -m platform.report focal_gamma_sweep --store sqlite:////abs/runs/results.db --reports-dir /tmp/reports
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m platform.report", description="Rebuild a study's static report pages from the results store.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", metavar="STUDY", help="study file (YAML) or study name")
    parser.add_argument("--reports-dir", metavar="DIR", default=None,
                        help="where the pages go (default: the study file's output.reports_dir, else ./reports)")
    parser.add_argument("--store", metavar="URL", default=None,
                        help="results store URL (default: the study file's tracking.store_url, "
                             "else sqlite:///./runs/results.db)")
    parser.add_argument("--resamples", metavar="N", type=int, default=None,
                        help="bootstrap resamples over val images (default 200)")
    return parser


def _resolve(args) -> tuple:
    """(study name, store URL, reports dir) from a study file or a name; raises ValueError with one line."""
    looks_like_file = args.study.endswith((".yaml", ".yml")) or os.sep in args.study
    if looks_like_file or os.path.isfile(args.study):
        from platform.study.load import StudyError, load_study

        try:
            study = load_study(args.study)
        except StudyError as e:
            raise ValueError(str(e)) from None
        return (study.name, args.store or study.tracking.store_url,
                os.path.abspath(args.reports_dir or study.output.reports_dir))
    store = args.store or "sqlite:///" + os.path.abspath(os.path.join("runs", "results.db"))
    return args.study, store, os.path.abspath(args.reports_dir or "reports")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        name, url, reports_dir = _resolve(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not os.path.isfile(parsed.database):
        print(f"error: no results store at {parsed.database} (run the study first, or pass --store)", file=sys.stderr)
        return 2

    from platform.track.store import Store

    try:
        store = Store(url, readonly=True)
        known = [s["name"] for s in store.studies()]
    except Exception as e:  # an unreadable store is the user's to fix, in one line
        print(f"error: cannot read the results store {parsed.render_as_string(hide_password=True)}: "
              f"{type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        if name not in known:
            print(f"error: study '{name}' is not in the results store "
                  f"{parsed.render_as_string(hide_password=True)} (studies there: {', '.join(known) or 'none'})",
                  file=sys.stderr)
            return 2
        from dashboards import build_study

        t0 = time.monotonic()
        ctx = build_study(store, name, reports_dir, resamples=args.resamples)
    finally:
        store.close()
    for page, size in ctx.sizes.items():
        path = os.path.normpath(os.path.join(ctx.study_dir, page))
        plots = ctx.plots.get(page)
        shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
        print(f"  {shown}  {size / 1024:.0f} KiB" + (f", {plots} plots" if plots is not None else ""))
    print(f"report for {name} in {time.monotonic() - t0:.1f}s: file://{os.path.join(ctx.study_dir, 'index.html')}")
    print(f"MLflow run links work while the MLflow UI runs: {ctx.mlflow_ui_command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
