"""MLflow on a tracking server backed by PostgreSQL, the results store on the same PostgreSQL in its
own database, and the drills that involve them: a driver killed with SIGKILL mid-study and resumed by
the same command, the tracking server stopped mid-study and the next run bringing MLflow up to date
from the store, and a tracking server that is not there at all.

One PostgreSQL and one ``mlflow server`` for the module (``scripts/tracking_server.py``, as a user
starts them); a service that cannot start fails the tests."""
import os
import signal
import time

import psutil
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from drills import Driver, epochs_of, free_port, write_study
from platform.track.reconcile import SYNC_TAG, in_sync, server_tag
from platform.track.store import Store
from scripts import tracking_server

# PostgreSQL, `mlflow server` and studies on a local Ray
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("services")
    state = tracking_server.start(str(state_dir), mlflow_port=free_port())
    yield state
    tracking_server.stop_mlflow(state["mlflow"])  # (a test may have restarted it: this state, not the file's)
    tracking_server.stop_postgres(state["postgres"])


def test_an_unreachable_tracking_server_is_one_clear_error_before_anything_starts(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    study = write_study(tmp_path / "away.yaml", tmp_path, name="away", tracking={"mlflow_uri": uri})
    drv = Driver(study)
    assert drv.finish(timeout=120) == 2
    out = drv.output
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach the MLflow tracking server at {uri}: nothing answers at {uri} "
                      f"(Connection refused)"], out
    assert "start  " not in out and "Traceback" not in out
    assert not os.path.exists(tmp_path / "runs" / "away" / "ray.log")  # no Ray was started


def _runs(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(children) == len([r for r in runs if "mlflow.parentRunId" in r.data.tags])  # no duplicates
    return parents, children


def test_killed_driver_resumes_and_an_outage_mid_study_is_reconciled_from_the_store(services, tmp_path):
    # 3 trials, one at a time, 3 epochs of 6 steps each (24 images, batch 4).
    study = write_study(tmp_path / "drill.yaml", tmp_path, name="drill", gammas=(0, 1, 2), epochs=3, num_train=24,
                        resources={"max_concurrent": 1, "max_failures": 1},
                        tracking={"mlflow_uri": services["mlflow_uri"], "store_url": services["store_url"]})
    client = MlflowClient(services["mlflow_uri"])
    t0 = time.monotonic()

    # 1. kill -9 the driver while the second trial is in its second epoch
    first = Driver(study)
    first.wait_for("done   gamma=0/seed=0")
    first.wait_for("gamma=1/seed=0: epoch 1,")
    ray_of_first = psutil.Process(first.proc.pid).children(recursive=True)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.finish(timeout=30)
    seen = epochs_of(first.output, "gamma=1/seed=0")  # [1] (or [1, 2]: the kill came a little late)
    time.sleep(1)
    left = [p for p in ray_of_first if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    parents, children = _runs(client, "drill")
    assert [p.info.status for p in parents] == ["RUNNING"]  # nobody ended it
    interrupted = children["gamma=1/seed=0"].info.run_id
    assert children["gamma=1/seed=0"].info.status == "RUNNING"

    # 2. the same command: finished trial skipped, the interrupted one continued from its last epoch
    # checkpoint in its own child run; then the tracking server goes away mid-study
    second = Driver(study)
    second.wait_for("3 trials, 1 cached, 2 to run")
    i, _, _ = second.wait_for("running 2 trials")
    second.wait_for("gamma=1/seed=0: epoch", after=i)
    tracking_server.stop_mlflow(services["mlflow"])
    assert second.finish() == 0, second.output
    out = second.output
    if left:  # what the killed driver left of its Ray was stopped before this run started its own
        assert "stopped " in out.split("running 2 trials")[0], out
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # continued after the last epoch the killed run recorded, not from epoch 1
    assert epochs_of(out, "gamma=1/seed=0") == list(range(seen[-1] + 1, 4)) and seen[-1] < 3, (seen, out)
    assert epochs_of(out, "gamma=2/seed=0") == [1, 2, 3]
    assert "warning: MLflow at " in out and "2/2 done" in out
    store = Store(services["store_url"])
    trials = {t["trial_key"]: t for t in store.trials("drill")}
    assert {t["status"] for t in trials.values()} == {"finished"} and len(trials) == 3
    assert sorted(store.trial_epochs("drill", trials["gamma=1/seed=0"]["config_hash"])) == [6, 12, 18]
    assert trials["gamma=1/seed=0"]["attempts"] == 2  # started by both invocations

    t2 = time.monotonic()

    # 3. the server back: the next run (everything cached) brings MLflow up to date from the store
    services["mlflow"] = tracking_server.start_mlflow(services["mlflow"]["backend"], services["mlflow"]["artifacts"],
                                                      services["mlflow"]["port"], services["mlflow"]["log"])
    t_restart = time.monotonic() - t2
    third = Driver(study)
    assert third.finish(timeout=120) == 0, third.output
    assert "everything was cached" in third.output
    assert "MLflow brought up to date from the results store" in third.output
    # and left the server's experiment tagged with what it synced: a fourth run, cached too, asks the
    # server for that tag in one request instead of importing MLflow and listing every run
    store = Store(services["store_url"])
    assert server_tag(services["mlflow_uri"], "drill", SYNC_TAG) is not None
    assert in_sync(store, "drill", services["mlflow_uri"], str(tmp_path / "runs" / "drill"))

    # counted through the server's API
    parents, children = _runs(client, "drill")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]  # the killed run, the cut-off run
    assert sorted(children) == ["gamma=0/seed=0", "gamma=1/seed=0", "gamma=2/seed=0"]
    assert children["gamma=1/seed=0"].info.run_id == interrupted
    params = {k: set(c.data.params) for k, c in children.items()}
    assert params["gamma=2/seed=0"] == params["gamma=0/seed=0"] and len(params["gamma=0/seed=0"]) > 40
    artifacts = {}
    for key, run in children.items():
        assert run.info.status == "FINISHED"
        assert {"AP50", "duration_s", "speed/latency_ms_p50", "train/loss"} <= set(run.data.metrics)
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [6, 12, 18]
        assert trials[key]["mlflow_run_id"] == run.info.run_id or key == "gamma=2/seed=0"
        artifacts[key] = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"detections.json", "eval.json", "model.pt", "resolved_config.json"} <= artifacts[key]
    assert Store(services["store_url"]).trials("drill")[2]["mlflow_run_id"] == children["gamma=2/seed=0"].info.run_id
    print(f"\nkilled run {first.lines[-1][0]:.0f} s, resumed run {second.lines[-1][0]:.0f} s, server restart "
          f"{t_restart:.0f} s, reconciling run {third.lines[-1][0]:.0f} s; in all {time.monotonic() - t0:.0f} s")
    print(f"through the server: {len(parents)} parent runs, {len(children)} child runs, "
          f"{sum(len(p) for p in params.values())} params, "
          f"{sum(len(c.data.metrics) for c in children.values())} metrics (latest values), "
          f"{sum(len(a) for a in artifacts.values())} artifacts")

    # MLflow's tables and the store's, each in its own database (both have a "metrics" table)
    base = services["store_url"].rsplit("/", 1)[0]
    for db, table in (("mlflow", "runs"), ("detbench", "trials")):
        engine = sqlalchemy.create_engine(f"{base}/{db}")
        assert {"metrics", table} <= set(sqlalchemy.inspect(engine).get_table_names())
        engine.dispose()
