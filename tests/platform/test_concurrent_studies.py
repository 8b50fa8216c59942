"""Two studies at once on one runs directory: two ``python -m platform.run`` processes, started
together, each with its own local Ray, both writing the shared results store (results.db) and MLflow
file (mlflow.db). Both must finish with nothing lost, duplicated or corrupted in either database."""
import sqlite3
import time
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from drills import Driver, write_study
from platform.track.store import Store

# two studies through python -m platform.run, each on a local Ray
pytestmark = pytest.mark.slow

STUDIES = ("concurrent_a", "concurrent_b")
GAMMAS, SEEDS = (0, 1, 2), (0, 1)  # 3 gammas x 2 seeds = 6 trials per study


def start(tmp_path, name):
    # the smoke study's tiny trials (4 optimiser steps, 1 epoch), 6 per study, 2 at a time
    study = write_study(tmp_path / f"{name}.yaml", tmp_path, name=name, gammas=GAMMAS, epochs=1,
                        train={"max_steps": 4}, sweep={"seeds": list(SEEDS)})
    return Driver(study)


def metric_rows(db):
    """The results store's metric rows: ``{(study, trial hash): Counter({(name, step): rows})}``."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT s.name, t.config_hash, m.name, m.step FROM metrics m "
                           "JOIN trials t ON m.trial_id = t.id JOIN studies s ON t.study_id = s.id").fetchall()
    out = {}
    for study, config_hash, name, step in rows:
        out.setdefault((study, config_hash), Counter())[(name, step)] += 1
    return out


def mlflow_points(db):
    """MLflow's metric points per run: ``{run id: {(key, step)}}``."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT run_uuid, key, step FROM metrics").fetchall()
    out = {}
    for run_id, key, step in rows:
        out.setdefault(run_id, set()).add((key, step))
    return out


def integrity(db):
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchall()


def test_two_studies_at_once_share_the_store_and_mlflow_with_nothing_lost(tmp_path):
    t0 = time.monotonic()
    drivers = [start(tmp_path, name) for name in STUDIES]  # started together
    codes = [d.finish(timeout=600) for d in drivers]
    took = time.monotonic() - t0
    print(f"\ntwo studies of {len(GAMMAS) * len(SEEDS)} trials at once: {took:.1f} s")
    for d, rc in zip(drivers, codes):
        assert rc == 0, d.output
        assert "6/6 done, 0 running, 0 pending, 0 failed" in d.output
    runs = tmp_path / "runs"
    assert integrity(runs / "results.db") == [("ok",)]
    assert integrity(runs / "mlflow.db") == [("ok",)]

    store = Store(f"sqlite:///{runs}/results.db", readonly=True)
    rows = metric_rows(runs / "results.db")
    points = mlflow_points(runs / "mlflow.db")
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    for name in STUDIES:
        trials = store.trials(name)
        assert len(trials) == 6 and {t["status"] for t in trials} == {"finished"}
        assert len({t["config_hash"] for t in trials}) == 6
        assert {(t["config"]["loss"]["params"]["gamma"], t["seed"]) for t in trials} == \
            {(g, s) for g in GAMMAS for s in SEEDS}
        assert all(t["attempts"] == 1 for t in trials)
        # Every trial has the same metric rows (one study, one budget): its final metrics (step None)
        # and its one epoch report (1 epoch of 4 steps: step 4), each row once.
        counts = [rows[(name, t["config_hash"])] for t in trials]
        assert all(max(c.values()) == 1 for c in counts)
        names = {k for k in counts[0]}
        assert all(set(c) == names for c in counts)
        assert {step for _, step in names} == {None, 4} and len(names) > 20

        exp = client.get_experiment_by_name(name)
        runs_of = client.search_runs([exp.experiment_id], max_results=100)
        parents = [r for r in runs_of if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs_of if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
        by_hash = {c.data.tags["detbench.config_hash"]: c for c in children}
        assert set(by_hash) == {t["config_hash"] for t in trials}
        for t in trials:
            child = by_hash[t["config_hash"]]
            assert child.info.run_id == t["mlflow_run_id"]
            # every store row is an MLflow point of the trial's run: an epoch row at its step, a final
            # metric at the last step (4), as the driver logged them; plus the trial's duration_s
            expected = {(n.replace("@", "_"), 4) for n, _ in rows[(name, t["config_hash"])]}
            assert points[child.info.run_id] - {("duration_s", 0)} == expected
            assert "duration_s" in child.data.metrics
