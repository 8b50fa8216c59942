"""Report pages built from a store populated through the Store API (tests/dashboards/fakes.py)."""
import os
import re
import subprocess
import sys

import numpy as np

import fakes
from fakes import EXPECTED_PLOTS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def page(fake_reports, name):
    return (fake_reports["reports"] / fakes.STUDY / name).read_text()


def test_pages_exist_offline_with_one_plotly_js(fake_reports):
    reports = fake_reports["reports"]
    assert (reports / "plotly.min.js").stat().st_size > 1_000_000
    for name in EXPECTED_PLOTS:
        text = (reports / fakes.STUDY / name).read_text()
        scripts = re.findall(r'<script src="([^"]+)"', text)
        assert scripts == ["../plotly.min.js" if name != "../index.html" else "plotly.min.js"], name
        assert "cdn" not in text.lower() and "https://" not in text, name
        # every href is relative, except the MLflow UI links
        for href in re.findall(r'href="([^"]+)"', text):
            assert href.startswith("http://127.0.0.1:5000/") or "://" not in href, (name, href)
        assert text.count('class="plotly-graph-div"') == EXPECTED_PLOTS[name], name
    assert fake_reports["ctx"].plots == EXPECTED_PLOTS


def test_every_trial_and_its_mlflow_run_on_the_overview(fake_reports):
    text = page(fake_reports, "index.html")
    store = fake_reports["store"]
    trials = store.trials(fakes.STUDY)
    assert len(trials) == len(fake_reports["trials"]) == 10
    for t in trials:
        assert t["trial_key"] in text
        assert f"#/experiments/7/runs/{t['mlflow_run_id']}" in text
    assert "failed" in text and "RuntimeError: loss is NaN at step 3" in text
    assert "mlflow ui --backend-store-uri" in text
    for name in ("accuracy.html", "speed.html", "loss.html"):
        body = page(fake_reports, name)
        for v in fakes.VARIANTS:
            assert v in body, (name, v)


def test_overview_states_winner_significance_and_setup(fake_reports):
    text = page(fake_reports, "index.html")
    assert "Winner: gamma=5,alpha=0.25" in text
    assert "Runner-up: gamma=2,alpha=0.25" in text
    assert "The lead is significant on both tests" in text
    assert "over 3 matching seeds: significant" in text and "over images (bootstrap): significant" in text
    assert "only when both tests exclude 0" in text and "within ±1.0 AP" in text  # the rule, stated
    assert "100 bootstrap resamples of the 30 val images" in text
    assert "loss.params.gamma" in text and "3 epochs" in text and "64 train / 30 val images" in text
    assert "1 failed, 9 finished" in text


def test_paper_comparison_marks(fake_reports):
    text = page(fake_reports, "index.html")
    assert "Table 1b" in text and "Lin et al., arXiv 1708.02002" in text
    assert "Table 1a" not in text  # only one variant (gamma 0) is a Table 1a row
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"<tr><td class=\"l\">(gamma=[^<]+)</td>.*?<span class=\"(?:ok|no|na)\">([a-z ]+)</span>", text)}
    assert rows == {"gamma=0,alpha=0.75": "reproduced", "gamma=2,alpha=0.25": "reference",
                    "gamma=5,alpha=0.25": "not reproduced"}
    assert "Ordering <span class=\"no\">not held</span>" in text
    assert "same direction on both tests (over 3 matching seeds: significant" in text


def test_loss_page_plots_every_reported_loss_term_per_variant(fake_reports):
    import json

    text = page(fake_reports, "loss.html")
    # the training-loss figure is the page's first plot; its panels are named by subplot titles
    found = re.search(r'Plotly.newPlot\(\s*"loss-1",\s*(\[.*?\]),\s*(\{.*?\})\s*,\s*\{"displaylogo',
                      text, re.S)
    traces, layout = json.loads(found.group(1)), json.loads(found.group(2))
    titles = [a["text"] for a in layout["annotations"]]
    # the weighted total first, then every term in name order; phase, img/s and val AP are not losses
    assert titles == ["train/loss", "train/loss_box", "train/loss_cls", "train/loss_dfl"]
    panels = {}
    for trace in traces:
        panels.setdefault(trace.get("xaxis", "x"), set()).add(trace["name"])
    # three variants in each panel, but only gamma=5 reports loss_dfl (the fourth panel, axis x4)
    assert [len(panels[a]) for a in ("x", "x2", "x3")] == [3, 3, 3]
    assert panels["x4"] == {"gamma=5,alpha=0.25"}


def test_accuracy_page_ranks_by_epoch_budget_and_gives_the_probability_of_improvement(fake_reports):
    text = page(fake_reports, "accuracy.html")
    order = ["gamma=5,alpha=0.25", "gamma=2,alpha=0.25", "gamma=0,alpha=0.75"]
    # every variant's val AP is fakes.FLAT (0.7, 1, 1) of its final AP: the final order at epochs 1, 2 and 3
    budget = text.split("<h2>Val AP by epoch budget</h2>")[1].split("<h2>")[0]
    assert "The ranking is stable from epoch 1: the same ordering at every evaluated epoch from 1 to 3, the last." \
        in budget
    rows = re.findall(r'<tr><td class="l">(\d+)</td><td class="l">(.*?)</td><td>(yes|no)</td></tr>', budget)
    assert [(e, re.findall(r"gamma=[0-9.]+,alpha=[0-9.]+", r), same) for e, r, same in rows] == [
        (str(e), order, "yes") for e in (1, 2, 3)]
    # pairs X above Y in that order; the tasks are the 30 val images (each has ground truth), the runs the seeds
    an = fake_reports["ctx"].an
    pairs = [(order[0], order[1]), (order[0], order[2]), (order[1], order[2])]
    pairwise = text.split("<h2>Pairwise comparisons (AP)</h2>")[1].split("<h2>")[0]
    assert "<th>P(X &gt; Y) [CI]</th>" in pairwise and "probability of improvement (Agarwal et al." in pairwise
    assert "averaged over the 30 val images with ground truth;" in pairwise and "one task" not in pairwise
    found = re.findall(r'<tr><td class="l">([^<]+)</td><td class="l">([^<]+)</td>.*?<td>([^<]+) '
                       r'<span class="note">\[([^\]]+)\]</span></td></tr>', pairwise)
    pis = [an.improvement(x, y) for x, y in pairs]
    assert [(pi["over"], pi["tasks"]) for pi in pis] == [("images", 30)] * 3
    assert found == [(x, y, f"{pi['p']:.2f}", f"{pi['lo']:.2f}, {pi['hi']:.2f}") for (x, y), pi in zip(pairs, pis)]
    # the tighter boxes win on most images: every interval above 0.5
    assert all(pi["lo"] > 0.5 for pi in pis)
    # gamma 5 against gamma 0: on every image the worst seed of gamma 5 beats the best of gamma 0, so all 3 x 3
    # seed pairs on all 30 images go to X: P = 1, and each bootstrap draw of the seeds keeps it: [1, 1]
    per = an.per_image_ap()
    assert np.all(per[order[0]].min(axis=0) > per[order[2]].max(axis=0))
    assert found[1][2:] == ("1.00", "1.00, 1.00")


def test_loss_names_and_epochs_from_step_keyed_rows():
    import pandas as pd

    from dashboards.data import _with_epoch
    from dashboards.pages import loss_names

    assert loss_names(["val/AP", "train/loss_quality", "phase", "train/loss", "train/loss_cls", "train/img_s"]) == [
        "train/loss", "train/loss_cls", "train/loss_quality"]
    # rows keyed by the global optimiser step (75, 150, ..., 750): epochs come from the epoch metric, 1-based
    steps = [75 * (e + 1) for e in range(10)]
    rows = [{"trial_key": "a/seed=0", "variant": "a", "seed": 0, "step": s, "name": n, "value": v}
            for e, s in enumerate(steps) for n, v in (("epoch", e), ("phase", 0 if e < 5 else 1),
                                                       ("train/loss", 1.0 / (e + 1)))]
    out = _with_epoch(pd.DataFrame(rows))
    loss = out[out["name"] == "train/loss"].sort_values("epoch")
    assert loss["epoch"].tolist() == list(range(1, 11))   # numeric: 10 after 9, not after 1
    assert loss["step"].tolist() == steps


def test_all_studies_index(fake_reports):
    text = (fake_reports["reports"] / "index.html").read_text()
    assert f'href="{fakes.STUDY}/index.html"' in text
    assert "gamma=5,alpha=0.25" in text and "1 failed, 9 finished" in text
    assert "(over 3 matching seeds: significant, p &lt; 0.001)" in text  # seeds only: no bootstrap here


def test_variant_table_for_the_terminal_summary(fake_reports):
    from dashboards.tables import variant_table

    rows = variant_table(fake_reports["store"], fakes.STUDY)
    assert [r["variant"] for r in rows] == ["gamma=5,alpha=0.25", "gamma=2,alpha=0.25", "gamma=0,alpha=0.75"]
    assert all(r["seeds"] == 3 for r in rows)


def test_empty_study_builds(tmp_path):
    from platform.track.store import Store

    from dashboards import build_reports

    store = Store(f"sqlite:///{tmp_path}/r.db")
    store.upsert_study("empty", "", {}, None)
    path = build_reports(store, "empty", str(tmp_path / "reports"))
    assert "No finished trials yet" in open(path).read()
    for name in ("accuracy.html", "speed.html", "loss.html"):
        assert (tmp_path / "reports" / "empty" / name).exists()


def run_report(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "platform.report", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_report_cli(fake_reports, tmp_path):
    url = f"sqlite:///{fake_reports['root']}/results.db"
    proc = run_report(fakes.STUDY, "--store", url, "--reports-dir", str(tmp_path / "out"), "--resamples", "20")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / fakes.STUDY / "speed.html").exists()
    assert "file://" in proc.stdout and "mlflow ui" in proc.stdout
    bad = run_report("no_such_study", "--store", url)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no_such_study" in bad.stderr and fakes.STUDY in bad.stderr
    missing = run_report("x", "--store", f"sqlite:///{tmp_path}/nope.db")
    assert missing.returncode == 2 and "no results store" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    badfile = run_report(str(tmp_path / "missing.yaml"))
    assert badfile.returncode == 2 and badfile.stderr.startswith("error: ")


def test_a_rerun_under_the_same_trial_key_supersedes_the_old_row(tmp_path):
    """After a detectors change every trial re-runs under a new config hash but the same key:
    the pages use the newest result and list the old row as superseded."""
    from platform.track.store import Store

    from dashboards import build_study

    store = Store(f"sqlite:///{tmp_path}/r.db")
    trials = fakes.populate(store, str(tmp_path))
    old = trials["gamma=0,alpha=0.75/seed=0"]
    new = dict(old, config_hash=old["config_hash"] + "-v2")
    store.record_finished(fakes.STUDY, new, {"AP": 0.9, "AP50": 0.95}, [{"step": 1, "val/AP": 0.9}],
                          {"per_class_ap": {c: 0.9 for c in fakes.CLASSES}}, "runv2" + "0" * 27, None, None)
    ctx = build_study(store, fakes.STUDY, str(tmp_path / "reports"), resamples=10)
    sd = ctx.sd
    assert len(sd.trials) == 11 and len(sd.finished) == 9
    row = sd.final.set_index("trial_key").loc["gamma=0,alpha=0.75/seed=0"]
    assert row["AP"] == 0.9 and sd.seeds("gamma=0,alpha=0.75") == [0, 1, 2]
    text = (tmp_path / "reports" / fakes.STUDY / "index.html").read_text()
    assert "superseded by a re-run" in text and "1 superseded" in text
    assert sd.data("per_class_ap")["gamma=0,alpha=0.75/seed=0"] == {c: 0.9 for c in fakes.CLASSES}
