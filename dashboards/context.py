"""What every page of a study shares: the data, the analysis, links, labels."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple

from dashboards.analysis import Analysis
from dashboards.data import StudyData
from dashboards.html import PLOTLY_JS, esc, nav, write_page

PAGES = (("Overview", "index.html"), ("Accuracy", "accuracy.html"), ("Speed", "speed.html"),
         ("Losses", "loss.html"))
TUNING_PAGE = ("Tuning", "tuning.html")  # only for a study with tuning trials (dashboards.tuning)
# workflowType: MLflow 3.17's UI shows its GenAI view unless the URL (or its global switch) asks for model training
MLFLOW_RUN_URL = "http://127.0.0.1:5000/#/experiments/{exp}/runs/{run}?workflowType=machine_learning"

AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SPEED_METRICS = (("speed/train_img_s", "train img/s"), ("speed/train_img_s_alone", "train img/s alone"),
                 ("speed/latency_ms_p50", "latency p50 ms"),
                 ("speed/latency_ms_p95", "latency p95 ms"), ("speed/throughput_img_s", "throughput img/s"),
                 ("speed/params", "params M"), ("speed/gflops", "GFLOPs/img"),
                 ("speed/peak_rss_mb", "peak RSS MB"), ("train/time_s", "train time s"))
# Stages of a two-stage detector's per-image time (``detectors.evaluation.speed``: stage_<name>_ms), in the order
# the Faster R-CNN paper's Table 5 lists them.
STAGES = (("speed/stage_proposals_ms", "proposals"), ("speed/stage_features_ms", "shared features"),
          ("speed/stage_regions_ms", "per-region"))


@dataclass
class PageContext:
    sd: StudyData
    an: Analysis
    reports_dir: str
    built: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    sizes: Dict[str, int] = field(default_factory=dict)        # page file -> bytes
    plots: Dict[str, int] = field(default_factory=dict)        # page file -> number of figures
    pretrainings: Dict[str, Any] = field(default_factory=dict)  # the store's pretraining runs, by digest
    pages: Tuple[Tuple[str, str], ...] = PAGES                  # (label, file) of the study's pages, the nav

    @property
    def study_dir(self) -> str:
        return os.path.join(self.reports_dir, self.sd.name)

    @property
    def plotly_src(self) -> str:
        return f"../{PLOTLY_JS}"

    def write(self, name: str, label: str, body: str, figs) -> str:
        """Write one page of the study (``figs``: its ``dashboards.html.Figures``); returns its path."""
        path = os.path.join(self.study_dir, name)
        self.sizes[name] = write_page(path, f"{self.sd.name}: {label.lower()}", self.nav(label),
                                      f"<h1>{esc(self.sd.name)}: {esc(label.lower())}</h1>{body}",
                                      self.plotly_src, self.built, self.source())
        self.plots[name] = figs.count
        return path

    def nav(self, here: str) -> str:
        return nav((("All studies", "../index.html"),) + self.pages, here)

    def source(self) -> str:
        url = self.sd.info.get("store_url") or ""
        return f"study '{self.sd.name}'" + (f", {url}" if url else "")

    def mlflow_uri(self) -> Optional[str]:
        return (self.sd.spec.get("tracking") or {}).get("mlflow_uri")

    def mlflow_ui_command(self) -> str:
        uri = self.mlflow_uri() or "<tracking uri of the study>"
        return f"mlflow ui --backend-store-uri '{uri}' --host 127.0.0.1 --port 5000"

    def run_link(self, run_id: Optional[str]) -> str:
        exp = self.sd.info.get("mlflow_experiment_id")
        if not run_id:
            return '<span class="na">–</span>'
        if not exp:
            return esc(run_id[:12])
        url = MLFLOW_RUN_URL.format(exp=exp, run=run_id)
        return f'<a href="{esc(url)}" title="{esc(run_id)}">{esc(run_id[:8])}</a>'
