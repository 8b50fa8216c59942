"""A failed trial's error in one line (platform.runner.failures), over Ray's own texts.

KILLED and TERMINATED are the error files Tune wrote (Ray 2.60) for a trial whose worker process was
sent SIGKILL (kill -9; the kernel's out-of-memory killer sends the same; a segfault and os._exit read
alike) and SIGTERM; ray_texts/train_worker_killed.txt, a multi-worker trial's. The node,
memory-monitor and ray.kill texts are put together from Ray 2.60's message templates (the strings
in gcs_server and raylet), with made-up ids."""
import os
from types import SimpleNamespace

from platform.runner.callbacks import ProgressCallback, trial_error_text
from platform.runner.failures import death_reason, last_failure, short_error

HEAD = ("The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
        "\tactor_id: b64ba958e2916192869bc40a01000000\n\tpid: 30391\n"
        "\tnamespace: 17fbbd53-5914-4f1e-b80a-d5fc2cbd22ed\n\tip: 192.0.2.2\n")
KILLED = (
    "Failure # 1 (occurred at 2026-12-06_11-18-24)\n" + HEAD +
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
    "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the "
    "process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the "
    "worker crashed unexpectedly due to SIGSEGV or another unexpected error. If the process was killed by the "
    "kernel OOM killer (verifiable by checking for OOM in dmesg of the OOMing node), consider enabling resource "
    "isolation via --enable-resource-isolation to prevent node deaths by resource contention and significant "
    "loss of progress by uninformed kernel OOM killing.\n")
TERMINATED = (
    "Failure # 1 (occurred at 2026-12-06_11-18-28)\n" + HEAD.replace("30391", "30598") +
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
    "Worker exits unexpectedly. Worker exits with an exit code 1. The process receives a SIGTERM.\n")
NODE = HEAD + ("The actor died because its node has died. Node Id: d343649c1655f37fa7749adbd40c01df\n"
               "\tthe actor's node was terminated unexpectedly: health check failed for node d343649c\n")
OUT_OF_MEMORY = HEAD + (
    "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY Worker exit "
    "detail: Memory on the node (IP: 192.0.2.2, ID: d343649c) was 7.51GB used / 7.75GB limit (0.969032)\n")
RAY_KILL = HEAD + "The actor is dead because it was killed by `ray.kill`.\n"
TRACEBACK = ("Failure # 2 (occurred at 2026-12-06_11-19-02)\n\x1b[36mray::ImplicitFunc.train()\x1b[39m\n"
             "Traceback (most recent call last):\n  File \"detectors/data/coco.py\", line 88, in load\n"
             "detectors.data.coco.DatasetError: image 9999 (corrupt.png) cannot be decoded\n")
# A two-worker trial whose Ray Train worker of rank 1 was sent SIGKILL (tests/platform/test_scale_out.py):
# Ray Train's WorkerGroupError with a snippet per rank (rank 0 lost its peer: a gloo "Connection reset
# by peer"; rank 1's health check found it dead), then the trial's WorkerFailed naming rank 0.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_texts", "train_worker_killed.txt")) as f:
    TRAIN_WORKER = f.read()

SUDDEN = "killed (SIGKILL: kill -9 or the kernel's out-of-memory killer) or crashed"


def test_a_dead_worker_is_named_with_its_pid_and_why_it_died():
    assert short_error(KILLED) == f"its worker (pid 30391) died: {SUDDEN}"
    assert short_error(TERMINATED) == "its worker (pid 30598) died: stopped by SIGTERM"
    # Ray's memory monitor: its figures kept (7.51 of 7.75 GB, the 0.969 of its threshold check)
    assert short_error(OUT_OF_MEMORY) == ("its worker (pid 30391) died: killed by Ray because its node was out "
                                          "of memory (7.51GB of 7.75GB)")
    assert short_error(RAY_KILL) == "its worker (pid 30391) was killed with ray.kill"
    # the rank that died (1, pid 21370), not the one WorkerFailed names (0, which lost its peer)
    assert short_error(TRAIN_WORKER) == f"its training worker 1 (pid 21370) died: {SUDDEN}"
    assert short_error("WorkerFailed: worker 2 of the trial failed: " + KILLED.splitlines()[-1]) == \
        f"its training worker 2 died: {SUDDEN}"


def test_a_dead_node_is_named_with_ray_s_reason():
    assert short_error(NODE) == "its node died (health check failed for node d343649c)"
    assert death_reason(HEAD + "The actor died because its node has died. Node Id: d343\n") == "its node died"


def test_any_other_error_keeps_its_traceback_s_last_line():
    assert death_reason(TRACEBACK) is None
    assert short_error(TRACEBACK) == "detectors.data.coco.DatasetError: image 9999 (corrupt.png) cannot be decoded"
    assert short_error("ValueError: boom") == "ValueError: boom"


def test_the_last_failure_of_the_file_is_the_one_told():
    both = KILLED + TRACEBACK  # killed first, then a retry raised
    assert last_failure(both) == TRACEBACK.split("\n", 1)[1].strip()
    assert short_error(both).startswith("detectors.data.coco.DatasetError")
    assert short_error(TRACEBACK + KILLED) == f"its worker (pid 30391) died: {SUDDEN}"
    assert last_failure("no header\n") == "no header"


def _trial(tmp_path, text, tid="t1"):
    path = tmp_path / f"{tid}.txt"
    path.write_text(text)
    return SimpleNamespace(trial_id=tid, error_file=str(path), config={"trial": {"trial_key": "gamma=2/seed=0"}})


def test_progress_says_what_died_and_what_comes_next_in_one_line_each(tmp_path):
    lines = []
    log = tmp_path / "ray.log"
    progress = ProgressCallback(1, 1, out=SimpleNamespace(write=lines.append, flush=lambda: None),
                                retries=1, log=str(log))
    trial = _trial(tmp_path, KILLED)
    progress.on_trial_start(0, [], trial)
    progress.on_trial_result(0, [], trial, {"epoch": 1, "train/loss": 0.5})  # the second epoch (counted from 0)
    progress.on_trial_recover(0, [], trial)
    progress.on_trial_start(0, [], trial)
    trial = _trial(tmp_path, KILLED + TERMINATED)
    progress.on_trial_error(0, [], trial)
    said = [ln.split("] ", 1)[1] for ln in "".join(lines).splitlines() if ln.strip()]
    assert said[2] == (f"retry  gamma=2/seed=0: its worker (pid 30391) died: {SUDDEN}; resuming from its last "
                       "checkpoint (after epoch 2), attempt 2 of 2")
    assert said[4] == "FAILED gamma=2/seed=0: its worker (pid 30598) died: stopped by SIGTERM; no retries left"
    assert all("\n" not in s and "Some common causes" not in s for s in said)
    # the whole text of each failure is in ray.log, once
    text = log.read_text()
    assert text.count("Some common causes include") == 1 and text.count("The process receives a SIGTERM") == 1
    assert "detbench trial gamma=2/seed=0 (attempt 1) failed:" in text


def test_a_retry_before_any_epoch_and_a_missing_error_file(tmp_path):
    lines = []
    progress = ProgressCallback(1, 1, out=SimpleNamespace(write=lines.append, flush=lambda: None), retries=3)
    trial = _trial(tmp_path, TERMINATED)
    progress.on_trial_start(0, [], trial)
    progress.on_trial_recover(0, [], trial)
    assert "".join(lines).rstrip().endswith("stopped by SIGTERM; resuming from its last checkpoint, attempt 2 of 4")
    gone = SimpleNamespace(trial_id="t2", error_file=str(tmp_path / "none.txt"), config={})
    assert trial_error_text(gone) == "trial failed (no error file)"
