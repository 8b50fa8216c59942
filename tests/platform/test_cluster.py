"""platform.runner.cluster and platform.track.reconcile's checkpoint pruning, without Ray: what a trial asks of the
cluster, the stale local Ray of a killed driver, and checkpoints the store never recorded."""
import json
import os
import subprocess
import sys

from platform.runner.cluster import (LOCAL_RAY_FILE, _start_time, fitting_trials, record_local_ray,
                                     stop_stale_local_ray,
                                     trial_footprint, trial_request)
from platform.track.reconcile import prune_checkpoints
from platform.study.spec import ResourcesSpec
from platform.track.store import Store


def test_a_multi_worker_trial_asks_for_its_process_and_its_workers():
    one = ResourcesSpec(cpus_per_trial=2.0, gpus_per_trial=1.0)
    assert trial_request(one) == {"cpu": 2.0, "gpu": 1.0} and trial_footprint(one) == (2.0, 1.0)
    four = ResourcesSpec(cpus_per_trial=8.0, gpus_per_trial=1.0, workers_per_trial=4)
    assert trial_request(four) == {"cpu": 0.5, "gpu": 0}  # Ray Train asks for the workers itself
    assert trial_footprint(four) == (32.5, 4.0)           # 4 x 8 + 0.5 CPUs, 4 x 1 GPUs
    # 2 nodes of 64 CPUs and 8 GPUs: 128 // 32.5 = 3 by CPUs, 16 // 4 = 4 by GPUs -> 3 whole trials
    assert fitting_trials(four, {"CPU": 128.0, "GPU": 16.0}) == 3
    assert fitting_trials(four, {"CPU": 32.0, "GPU": 16.0}) == 0   # not even one
    two = ResourcesSpec(cpus_per_trial=0.75, workers_per_trial=2)
    assert fitting_trials(two, {"CPU": 2.0}) == 1                 # 2 x 0.75 + 0.5 = 2: this machine


def test_a_killed_driver_s_local_ray_is_stopped_and_a_live_one_is_left_alone(tmp_path):
    # stand-ins: a "driver" that is gone and a process of "its Ray" that outlived it
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = {"driver": [999999999, "1"], "processes": [[left.pid, _start_time(left.pid)]]}
        (tmp_path / LOCAL_RAY_FILE).write_text(json.dumps(record))
        assert stop_stale_local_ray(str(tmp_path), wait=10) == 1
        assert left.wait(timeout=10) == -9  # SIGKILL
        assert not (tmp_path / LOCAL_RAY_FILE).exists()
        # a record whose driver is alive (here: a recorded start time that matches) is a run in progress
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            record = {"driver": [other.pid, _start_time(other.pid)], "processes": [[other.pid, _start_time(other.pid)]]}
            (tmp_path / LOCAL_RAY_FILE).write_text(json.dumps(record))
            assert stop_stale_local_ray(str(tmp_path)) == 0 and other.poll() is None
        finally:
            other.kill()
            other.wait()
        # a pid that now belongs to another process (another start time) is not touched
        third = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            (tmp_path / LOCAL_RAY_FILE).write_text(json.dumps({"driver": [999999999, "1"],
                                                               "processes": [[third.pid, "1"]]}))
            assert stop_stale_local_ray(str(tmp_path)) == 0 and third.poll() is None
        finally:
            third.kill()
            third.wait()
    finally:
        if left.poll() is None:
            left.kill()


def test_record_lists_this_process_s_children(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record_local_ray(str(tmp_path))
        saved = json.loads((tmp_path / LOCAL_RAY_FILE).read_text())
        assert saved["driver"][0] == os.getpid()
        assert [child.pid, _start_time(child.pid)] in saved["processes"]
    finally:
        child.kill()
        child.wait()


def test_checkpoints_the_store_never_recorded_are_pruned(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.db")
    store.upsert_study("s", "", {}, None)
    trial = {"config_hash": "h" * 64, "trial_key": "k/seed=0", "variant": "k", "seed": 0,
             "trial_dir": str(tmp_path / "t")}
    for e in range(3):
        os.makedirs(tmp_path / "t" / "checkpoints" / f"epoch_{e:03d}")
    store.mark_running("s", trial, None)
    store.record_epoch("s", trial, 4, {"epoch": 0, "train/loss": 1.0})  # only epoch 0 reached the driver
    prune_checkpoints(store, "s", [trial])
    assert sorted(os.listdir(tmp_path / "t" / "checkpoints")) == ["epoch_000"]
    os.makedirs(tmp_path / "t" / "final")
    prune_checkpoints(store, "s", [trial], force=True)  # --force: from scratch
    assert os.listdir(tmp_path / "t" / "checkpoints") == [] and not (tmp_path / "t" / "final").exists()


def test_one_driver_per_study_at_a_time(tmp_path):
    from platform.runner.cluster import DRIVER_FILE, claim_study, release_study

    assert claim_study(str(tmp_path)) is None  # this process holds it
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = json.loads((tmp_path / DRIVER_FILE).read_text())
        (tmp_path / DRIVER_FILE).write_text(json.dumps(dict(record, pid=other.pid, start=_start_time(other.pid))))
        assert "another run of this study is in progress (pid %d" % other.pid in claim_study(str(tmp_path))
    finally:
        other.kill()
        other.wait()
    assert claim_study(str(tmp_path)) is None  # its driver is gone (killed): taken over
    release_study(str(tmp_path))
    assert not (tmp_path / DRIVER_FILE).exists()
