"""A real two-node Ray cluster on this machine: a head and a second node (``ray start``, each with
its own temp dir, ports and one CPU, on 127.0.0.1), the study run with ``--address``; mid-study the
second node is stopped. Its trial is retried on the head from its last epoch checkpoint (Tune's,
in the runs directory: storage both nodes see) and finishes; the store names the nodes each trial
trained on. Only the two nodes this test started are stopped."""
import os
import secrets
import time

import pytest
from mlflow.tracking import MlflowClient

from drills import Driver, RayNode, continued, epochs_of, write_study
from platform.track.store import Store

# two `ray start` nodes and a study on them
pytestmark = pytest.mark.slow


def test_trials_run_on_both_nodes_and_a_stopped_node_s_trial_finishes_on_the_other(tmp_path):
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # this cluster's own token
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(auth)
    t0 = time.monotonic()
    head = RayNode(tmp_path / "head.log", env)
    nodes = [head]
    try:
        head.wait_started()
        second = RayNode(tmp_path / "second.log", env, head=head.address)
        nodes.append(second)
        second.wait_started()
        # 2 trials of 1 CPU on 2 nodes of 1 CPU: one trial per node.
        study = write_study(tmp_path / "two.yaml", tmp_path, name="twonode", gammas=(0, 2), epochs=3, num_train=32,
                            resources={"cpus_per_trial": 1, "max_concurrent": 2, "max_failures": 3})
        t_nodes = time.monotonic() - t0
        drv = Driver(study, "--address", head.address, env=auth)
        drv.wait_for("gamma=0/seed=0: epoch 1,")
        drv.wait_for("gamma=2/seed=0: epoch 1,")
        second.remember()
        t_stop = drv.now()
        second.stop()  # mid-study: what `ray stop` does, on that node only
        rc = drv.finish()
    finally:
        t_down = time.monotonic()
        for node in nodes:
            node.stop()
        leftovers = [p for node in nodes for p in node.wait_stopped(wait=10)]
        t_down = time.monotonic() - t_down
    print(f"\ntwo nodes up in {t_nodes:.1f} s; study {drv.lines[-1][0]:.1f} s (second node stopped at {t_stop:.1f} s); "
          f"teardown {t_down:.1f} s")
    out = drv.output
    assert rc == 0, out
    assert not leftovers, leftovers
    assert "2/2 done" in out
    (retried,) = [k for k in ("gamma=0/seed=0", "gamma=2/seed=0") if f"retry  {k}" in out]
    assert continued(epochs_of(out, retried), 3), epochs_of(out, retried)  # from its checkpoint, not epoch 1

    store = Store(f"sqlite:///{tmp_path}/runs/results.db")
    nodes_of = store.trial_data("twonode", "nodes")
    other = ({"gamma=0/seed=0", "gamma=2/seed=0"} - {retried}).pop()
    # the stopped node, then the head; the other trial stayed on the head
    assert len(nodes_of[retried]) == 2 and nodes_of[retried][1:] == nodes_of[other], nodes_of
    attempts = {t["trial_key"]: t["attempts"] for t in store.trials("twonode")}
    # (a retry that Ray placed on the stopping node before it was gone would be one more attempt)
    assert attempts[retried] == out.count(f"retry  {retried}") + 1 >= 2 and attempts[other] == 1
    assert {t["status"] for t in store.trials("twonode")} == {"finished"}
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    exp = client.get_experiment_by_name("twonode")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]
    by_key = {c.info.run_name: c for c in children}
    assert by_key[retried].data.tags["detbench.nodes"] == ",".join(nodes_of[retried])
