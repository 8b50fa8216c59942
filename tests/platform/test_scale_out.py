"""A multi-worker trial through a study (Ray Train inside the Tune trial), and the worker-kill
drill: kill -9 one of its training workers mid-epoch; the trial resumes from its last epoch
checkpoint, finishes once, and the store counts the attempt.
(Loss equivalence of 2 workers and 1: tests/detectors/test_distributed.py.)"""
import pytest
from mlflow.tracking import MlflowClient

from drills import Driver, continued, epochs_of, ray_processes, write_study
from platform.track.store import Store

# a study on a local Ray with a Ray Train (DDP) trial
pytestmark = pytest.mark.slow

KEY = "gamma=2/seed=0"


def test_two_worker_trial_resumes_after_a_worker_is_killed_mid_epoch(tmp_path):
    # 48 images, global batch 4 over 2 workers of 0.75 CPU each (+ 0.5 for the trial's own
    # process: 2 CPUs, this machine's): 12 steps per epoch, 3 epochs.
    study = write_study(tmp_path / "ddp.yaml", tmp_path, name="ddp", epochs=3, num_train=48,
                        resources={"cpus_per_trial": 0.75, "workers_per_trial": 2, "max_failures": 1})
    drv = Driver(study)
    i, t_first, _ = drv.wait_for(f"{KEY}: epoch 1,")
    workers = ray_processes(drv.proc.pid, "RayTrainWorker")
    assert len(workers) == 2, [p.name() for p in workers]
    t_kill = drv.now()
    workers[-1].kill()  # SIGKILL, mid-way through epoch 2
    j, _, retry = drv.wait_for(f"retry  {KEY}", after=i)
    _, t_back, _ = drv.wait_for(f"{KEY}: epoch", after=j)
    rc = drv.finish()
    out = drv.output
    assert rc == 0, out
    assert "1/1 done" in out
    assert continued(epochs_of(out, KEY), 3), epochs_of(out, KEY)  # from its last epoch, not from epoch 1
    # one line: which worker died and how, and what happens next; Ray's paragraphs go to ray.log
    assert f"(pid {workers[-1].pid}) died: killed (SIGKILL" in retry and "attempt 2 of 2" in retry, retry
    assert "Some common causes" not in out and "(raylet)" not in out
    with open(tmp_path / "runs" / "ddp" / "ray.log") as f:
        assert "Some common causes" in f.read()
    print(f"\nkilled worker -> trial reporting its next epoch again: {t_back - t_kill:.1f} s "
          f"(first epoch report {t_first:.1f} s after the driver started)")

    store = Store(f"sqlite:///{tmp_path}/runs/results.db")
    (trial,) = store.trials("ddp")
    assert trial["status"] == "finished" and trial["attempts"] == 2  # the first try and the retry
    assert sorted(store.trial_epochs("ddp", trial["config_hash"])) == [12, 24, 36]  # each epoch once
    assert len(store.trial_data("ddp", "nodes")[KEY]) == 1  # one node: the local Ray
    final = {r["name"]: r["value"] for r in store.final_metrics("ddp")}
    assert final["speed/train_img_s"] > 0 and final["step"] == 36

    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    exp = client.get_experiment_by_name("ddp")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert [c.info.status for c in children] == ["FINISHED"]  # the retry continued the trial's own run
    history = client.get_metric_history(children[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [12, 24, 36]
    assert children[0].info.run_id == trial["mlflow_run_id"]
