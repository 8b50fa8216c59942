"""The headline command end to end, as a user runs it: real Ray Tune, real MLflow
(SQLite in a temp dir), the real results store and the real report, counted.

One module-scoped sequence keeps Ray start-ups to a minimum:
  1. the smoke study (2 trials) -> 2 child runs under 1 parent, 2 finished store rows, a report;
  2. the same command again -> no trial runs, "everything was cached", no new MLflow run;
  3. one grid value changed -> only the new trial runs;
and separately a trial that raises is retried, then recorded as failed while the other finishes.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from detectors.data.synthetic import generate
from platform.track.store import Store

# every test runs `python -m platform.run` on a local Ray (or a `ray start` head)
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "platform.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_study(path, runs, gammas, **extra):
    with open(os.path.join(REPO, "studies", "smoke.yaml")) as f:
        study = yaml.safe_load(f)
    study["sweep"]["grid"] = {"loss.params.gamma": gammas}
    study["output"] = {"runs_dir": str(runs / "runs"), "reports_dir": str(runs / "reports")}
    study.update(extra)
    path.write_text(yaml.safe_dump(study))
    return str(path)


def mlflow_runs(runs_dir):
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    study = write_study(root / "smoke.yaml", root, [0, 2])
    proc = run_cli(study)
    return root, study, proc


def test_smoke_study_runs_every_trial_through_ray_mlflow_and_the_store(first_run):
    root, _, proc = first_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "2 trials, 0 cached, 2 to run" in out
    assert "2/2 done, 0 running, 0 pending, 0 failed" in out
    assert "report: " in out and "mlflow ui --backend-store-uri" in out and "127.0.0.1" in out
    # Tune's own tables stay out of the terminal; Ray's logs go to a file.
    assert "Trial status" not in out and "Configuration for experiment" not in out
    assert "Token authentication" not in proc.stdout + proc.stderr  # Ray's start-up notice goes to ray.log
    assert os.path.exists(root / "runs" / "smoke" / "ray.log")

    parents, children = mlflow_runs(root / "runs")
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0].info.run_id
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{root}/runs/mlflow.db")
    for child in children:
        assert "AP50" in child.data.metrics and "speed/latency_ms_p50" in child.data.metrics
        assert child.data.params["loss.name"] == "focal"
        # per-epoch metrics are a history, not one value
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) >= 1
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"detections.json", "eval.json", "model.pt", "resolved_config.json", "per_class_ap.json"} <= artifacts

    store = Store(f"sqlite:///{root}/runs/results.db")
    trials = store.trials("smoke")
    assert len(trials) == 2 and {t["status"] for t in trials} == {"finished"}
    assert {t["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    names = {r["name"] for r in store.final_metrics("smoke")}
    assert {"AP", "AP50", "AP75", "speed/train_img_s", "speed/gflops"} <= names
    assert len(store.trial_data("smoke", "per_class_ap")) == 2
    # the last (here the only) epoch keeps its training losses: the final report is not an epoch
    # rows are keyed by the global optimiser step: max_steps 4 -> the only epoch ends at step 4, phase 0
    rows = store.epoch_metrics("smoke")
    assert {r["step"] for r in rows} == {4}
    last_epoch = {r["name"] for r in rows}
    assert {"train/loss", "train/loss_cls", "val/AP50", "epoch", "phase"} <= last_epoch
    assert "speed/gflops" not in last_epoch
    assert len(store.trial_data("smoke", "loss_diagnostics")) == 2
    # the val ground truth the pages' bootstrap needs: stored once, named by both trials
    digests = store.trial_data("smoke", "val_ground_truth")
    assert len(digests) == 2 and len(set(digests.values())) == 1
    assert len(store.ground_truth(next(iter(digests.values())))["images"]) > 0
    # one duration: the store's duration_s is the MLflow run's end - start (ms) and its metric
    by_run = {c.info.run_id: c for c in children}
    for t in trials:
        run = by_run[t["mlflow_run_id"]]
        assert round(t["duration_s"] * 1000) == run.info.end_time - run.info.start_time
        assert run.data.metrics["duration_s"] == t["duration_s"]
        (inp,) = client.get_run(run.info.run_id).inputs.dataset_inputs  # the Dataset column
        assert inp.dataset.name.startswith("synthetic-") and inp.dataset.name in out  # "dataset: ... ready"
    assert client.get_experiment(children[0].info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"

    page = (root / "reports" / "smoke" / "index.html").read_text()
    for t in trials:
        assert t["trial_key"] in page


def test_rerun_is_fully_cached(first_run):
    root, study, _ = first_run
    proc = run_cli(study, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 trials, 2 cached, 0 to run" in proc.stdout
    assert "everything was cached" in proc.stdout
    parents, children = mlflow_runs(root / "runs")
    assert len(parents) == 1 and len(children) == 2  # nothing new in MLflow
    # the first run left MLflow in step with the store and said so: this run did not open MLflow
    from platform.track.reconcile import in_sync

    with Store(f"sqlite:///{root}/runs/results.db") as store:
        assert in_sync(store, "smoke", f"sqlite:///{root}/runs/mlflow.db", str(root / "runs" / "smoke"))


def test_changed_grid_value_runs_only_the_new_trial(first_run):
    root, _, _ = first_run
    study = write_study(root / "smoke_changed.yaml", root, [0, 1])  # gamma 2 -> 1
    proc = run_cli(study)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 trials, 1 cached, 1 to run" in proc.stdout
    assert "start  gamma=1/seed=0" in proc.stdout and "start  gamma=0/seed=0" not in proc.stdout
    _, children = mlflow_runs(root / "runs")
    assert len(children) == 3
    assert len(Store(f"sqlite:///{root}/runs/results.db").trials("smoke")) == 3


def test_failing_trial_is_retried_then_recorded_while_others_finish(tmp_path):
    # A COCO-format dataset on disk; one variant's annotation file names an image
    # file that exists but is not an image. The driver's check cannot see that (it
    # lists files, it does not decode them), so the worker raises DatasetError,
    # Tune retries once, and the trial is recorded failed.
    paths = generate({"num_train": 8, "num_val": 4, "seed": 5}, str(tmp_path / "data"))
    with open(paths["train_annotations"]) as f:
        bad = json.load(f)
    bad["images"].append({"id": 9999, "file_name": "corrupt.png", "width": 128, "height": 128})
    open(os.path.join(paths["train_images"], "corrupt.png"), "wb").close()
    bad_path = tmp_path / "instances_train_bad.json"
    bad_path.write_text(json.dumps(bad))
    study = write_study(tmp_path / "failing.yaml", tmp_path, [2],
                        dataset={"kind": "coco", **{k: paths[k] for k in
                                 ("train_images", "train_annotations", "val_images", "val_annotations")}})
    with open(study) as f:
        spec = yaml.safe_load(f)
    spec["sweep"]["grid"]["dataset.train_annotations"] = [paths["train_annotations"], str(bad_path)]
    spec["resources"]["max_failures"] = 1
    with open(study, "w") as f:
        yaml.safe_dump(spec, f)

    proc = run_cli(study)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "retry" in proc.stdout and "FAILED" in proc.stdout
    assert "1/2 done" in proc.stdout and "1 failed" in proc.stdout
    store = Store(f"sqlite:///{tmp_path}/runs/results.db")
    by_status = {t["status"]: t for t in store.trials("smoke")}
    assert set(by_status) == {"finished", "failed"}
    failed = by_status["failed"]
    assert "corrupt.png" in failed["error"] and "9999" in failed["error"]
    assert failed["attempts"] == 2  # the first try and one retry
    _, children = mlflow_runs(tmp_path / "runs")
    assert len(children) == 2  # the retry continued its own child run
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    # the failed trial's duration spans both attempts, the same in the store and in MLflow
    run = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db").get_run(failed["mlflow_run_id"])
    assert round(failed["duration_s"] * 1000) == run.info.end_time - run.info.start_time
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["coco-instances_train_bad"]


def test_ctrl_c_keeps_finished_trials_and_a_rerun_resumes(tmp_path):
    import signal
    import time

    study = write_study(tmp_path / "interrupt.yaml", tmp_path, [0, 1, 2, 3])
    with open(study) as f:
        spec = yaml.safe_load(f)
    spec["train"].update(max_steps=None, epochs=3)
    spec["dataset"]["synthetic"] = {"num_train": 120, "num_val": 8}
    with open(study, "w") as f:
        yaml.safe_dump(spec, f)

    # Like Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    proc = subprocess.Popen([sys.executable, "-m", "platform.run", study], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines, deadline = [], time.monotonic() + 240
    for line in proc.stdout:
        lines.append(line)
        if "2/4 done" in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "interrupted: 2 finished trials are kept" in out

    store = Store(f"sqlite:///{tmp_path}/runs/results.db")
    assert len(store.finished_hashes("smoke")) == 2
    parents, children = mlflow_runs(tmp_path / "runs")
    assert [p.info.status for p in parents] == ["KILLED"]
    statuses = sorted(c.info.status for c in children)
    # trials that had started when SIGINT came are KILLED; none is left RUNNING
    assert statuses[:2] == ["FINISHED", "FINISHED"] and set(statuses[2:]) <= {"KILLED"}

    again = run_cli(study)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 trials, 2 cached, 2 to run" in again.stdout
    assert len(store.finished_hashes("smoke")) == 4
    _, children = mlflow_runs(tmp_path / "runs")
    # the interrupted trials finished in their own child runs: still 4, all finished
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 4


def test_runs_on_an_existing_ray_cluster_and_rejects_an_unreachable_one(tmp_path):
    study = write_study(tmp_path / "cluster.yaml", tmp_path, [2])
    bad = run_cli(study, "--address", "127.0.0.1:1", timeout=120)
    assert bad.returncode == 2
    assert "cannot connect to the Ray cluster at 127.0.0.1:1" in bad.stderr

    import signal
    import time

    import psutil

    # A head node of our own, in its own process group: stopping it must not touch any
    # other Ray on this machine (`ray stop` would end them all).
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", "6391", "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(90):  # until the head listens on its port
            if head.poll() is not None or any(c.laddr.port == 6391 and c.status == psutil.CONN_LISTEN
                                              for c in psutil.net_connections(kind="tcp")):
                break
            time.sleep(1)
        assert head.poll() is None, "the Ray head did not start"
        # "auto": the cluster `ray start` registered; detectors/ is shipped as a py_module.
        proc = run_cli(study, "--address", "auto")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        # `ray stop` would also forget the cluster; killing the head leaves its address registered
        registered = "/tmp/ray/ray_current_cluster"
        if os.path.exists(registered) and ":6391" in open(registered).read():
            os.remove(registered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1/1 done" in proc.stdout
    _, children = mlflow_runs(tmp_path / "runs")
    assert [c.info.status for c in children] == ["FINISHED"]
