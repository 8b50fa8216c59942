"""The MLflow UI as a trainer opens it: a real ``mlflow ui`` on a study's tracking store
(written by StudyTracker, no Ray) and headless Chromium at the URL the run prints.

It must land on the runs table, in the Model training view, with the Dataset column
filled for the parent run and, unfolded, for every child run. Needs Debian's chromium
and chromium-driver (``bash scripts/setup_test_browser.sh``); missing, the test fails.
The screenshot goes to ``$DETBENCH_TEST_ARTIFACTS`` (default
``reports/_test_artifacts/mlflow``, ignored by git).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from platform.study.expand import expand, resolve_dataset_paths
from platform.study.load import load_study
from platform.track.tracking import StudyTracker, dataset_name, study_description

# `mlflow ui` and headless Chromium
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.environ.get("DETBENCH_TEST_ARTIFACTS", os.path.join(REPO, "reports", "_test_artifacts", "mlflow"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    """A two-trial study in MLflow: one parent run, two finished child runs."""
    monkeypatch.chdir(tmp_path)
    study_file = tmp_path / "ui.yaml"
    with open(os.path.join(REPO, "studies", "smoke.yaml")) as f:
        study_file.write_text(f.read())
    study = load_study(str(study_file))
    paths = {k: f"/data/set/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}
    trials = resolve_dataset_paths(expand(study), paths)
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", study.name, str(tmp_path / "mlartifacts"))
    tracker.start_parent(str(study_file), REPO, {"trials": 2}, "v1", trials=trials,
                         description=study_description(study, trials, "reports/smoke/index.html"))
    for t in trials:
        tracker.end_child(tracker.start_child(t), "FINISHED")
    tracker.end_parent("FINISHED")
    return tracker, trials


@pytest.fixture
def mlflow_ui(tracked, tmp_path):
    tracker, _ = tracked
    port = free_port()
    log = open(tmp_path / "mlflow-ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.tracking_uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow ui exited: " + (tmp_path / "mlflow-ui.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer in 180 s"
            time.sleep(1)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: uvicorn's workers go with it
        proc.wait(timeout=60)
        log.close()


def test_the_printed_url_opens_the_runs_table_with_datasets(tracked, mlflow_ui, tmp_path):
    if not CHROMIUM or not os.path.exists(CHROMEDRIVER):  # a failure, never a skip
        pytest.fail("browser test cannot run: chromium / chromedriver not found (bash scripts/setup_test_browser.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tracker, trials = tracked
    name = dataset_name(trials[0]["dataset"])
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1600,800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)

    def body_once(cond, timeout=90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = driver.find_element("tag name", "body").text
            if cond(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.5)

    try:
        # A fresh profile: the UI's own switch is at its default (GenAI); the URL decides.
        driver.get(tracker.experiment_url().replace("127.0.0.1:5000", f"127.0.0.1:{mlflow_ui}"))
        text = body_once(lambda t: name in t)
        assert f"/#/experiments/{tracker.experiment_id}/runs" in driver.current_url
        assert "Run Name" in text and "Dataset" in text, text[:1000]  # the runs table's header
        assert name in text, f"no dataset {name} in the runs table: {text[:1000]}"
        # unfold the parent: both child runs, each with the dataset
        driver.execute_script("document.querySelector('button[data-component-id*=runnamecellrenderer]').click()")
        keys = [t["trial_key"] for t in trials]
        text = body_once(lambda t: all(k in t for k in keys) and t.count(name) >= 3)
        os.makedirs(ARTIFACTS, exist_ok=True)
        driver.save_screenshot(os.path.join(ARTIFACTS, "runs_table.png"))
        assert all(k in text for k in keys), text[:1500]
        assert text.count(name) >= 3  # parent + 2 children
    finally:
        driver.quit()
