"""What a study asks of the Ray cluster, the services it needs, and the local Ray of a dead driver.

Resources. A one-worker trial is one Tune trial process holding
``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs. A trial with
``workers_per_trial: N > 1`` is a Tune trial process holding
``TRIAL_PROCESS_CPUS`` (it only waits, forwards rank 0's reports and copies
checkpoints into Tune's storage) plus a Ray Train run whose N workers hold
``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs each, in their own placement
group. Ray Train asks for that group only once the Tune trial is running, so
Tune alone could start more trials than there are workers for, and every trial
would wait for workers forever: the driver caps the number of concurrent trials
at what fits whole (:func:`fitting_trials`), and refuses to start a study none
of whose trials fits the cluster.

Services. An MLflow tracking server that does not answer makes the client retry
for minutes; :func:`check_tracking_server` asks once, with a short timeout,
before anything starts.

A killed driver. A driver started with a local Ray takes its Ray with it when
it exits, but ``kill -9`` leaves some of it (the dashboard and runtime-env
agents, seen alive 15 s later). :func:`record_local_ray` writes down the
processes of the local Ray a driver started; the next run of the study stops
those still alive before it starts its own (:func:`stop_stale_local_ray`).
Linux only (``/proc``); elsewhere both do nothing. Likewise :func:`claim_study`
keeps a second driver of the same study off while the first one lives (it would
take the first one's RUNNING parent run for a killed one's).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

TRIAL_PROCESS_CPUS = 0.5
LOCAL_RAY_FILE = "local_ray.json"
DRIVER_FILE = "driver.json"


# --------------------------------------------------------------------------- resources

def trial_request(res) -> Dict[str, float]:
    """What the Tune trial itself asks for (``tune.with_resources``)."""
    if res.workers_per_trial == 1:
        return {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
    return {"cpu": TRIAL_PROCESS_CPUS, "gpu": 0}


def trial_footprint(res) -> Tuple[float, float]:
    """(CPUs, GPUs) one running trial holds in all: its own process and its workers."""
    n = res.workers_per_trial
    if n == 1:
        return res.cpus_per_trial, res.gpus_per_trial
    return TRIAL_PROCESS_CPUS + n * res.cpus_per_trial, n * res.gpus_per_trial


def fitting_trials(res, cluster: Dict[str, float]) -> int:
    """How many trials fit the cluster's resources at once (0: not even one)."""
    cpus, gpus = trial_footprint(res)
    fit = math.floor(cluster.get("CPU", 0.0) / cpus + 1e-9)
    if gpus > 0:
        fit = min(fit, math.floor(cluster.get("GPU", 0.0) / gpus + 1e-9))
    return fit


def describe_footprint(res) -> str:
    cpus, gpus = trial_footprint(res)
    text = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
    if res.workers_per_trial > 1:
        text += (f" ({res.workers_per_trial} workers x {res.cpus_per_trial:g} CPUs"
                 + (f" x {res.gpus_per_trial:g} GPUs" if res.gpus_per_trial else "")
                 + f", plus {TRIAL_PROCESS_CPUS:g} for the trial's own process)")
    return text


# --------------------------------------------------------------------------- services

def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (``http(s)://``) rather than a store the driver opens itself."""
    return tracking_uri.startswith(("http://", "https://"))


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless the MLflow server at ``uri`` (http/https) answers its health check."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise ConnectionError(f"{url} answered HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        raise ConnectionError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"nothing answers at {uri} ({getattr(reason, 'strerror', None) or reason})") from None


# --------------------------------------------------------------------------- a dead driver's local Ray

def _start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot) if it is alive, else None (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _children() -> Dict[int, List[int]]:
    out: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(name))
    return out


def _descendants(pid: int) -> List[int]:
    children, out, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def claim_study(run_dir: str) -> Optional[str]:
    """Record this process as the study's driver; if a live driver on this machine already
    holds it, leave it and return a line saying so. A record whose driver is gone (killed)
    is taken over. (Drivers on other machines are not seen: one driver per study at a time.)"""
    path = os.path.join(run_dir, DRIVER_FILE)
    try:
        with open(path) as f:
            other = json.load(f)
    except (OSError, ValueError):
        other = None
    if other and other.get("host") == socket.gethostname() and other.get("pid") != os.getpid() \
            and _start_time(other["pid"]) == other.get("start") and os.path.isdir("/proc"):
        return (f"another run of this study is in progress (pid {other['pid']}, started "
                f"{time.strftime('%H:%M:%S', time.localtime(other.get('since', 0)))}); wait for it, or stop it")
    with open(path + ".tmp", "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
                   "since": time.time()}, f)
    os.replace(path + ".tmp", path)
    return None


def release_study(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, DRIVER_FILE))
    except OSError:
        pass


def record_local_ray(run_dir: str) -> None:
    """Write down this driver and the processes of the local Ray it just started (its descendants)."""
    if not os.path.isdir("/proc"):
        return
    me = os.getpid()
    procs = [[pid, _start_time(pid)] for pid in _descendants(me)]
    path = os.path.join(run_dir, LOCAL_RAY_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"driver": [me, _start_time(me)], "processes": [p for p in procs if p[1]]}, f)
    os.replace(path + ".tmp", path)


def forget_local_ray(run_dir: str) -> None:
    """The local Ray stopped with its driver: nothing to clean up next time."""
    try:
        os.remove(os.path.join(run_dir, LOCAL_RAY_FILE))
    except OSError:
        pass


def stop_stale_local_ray(run_dir: str, wait: float = 15.0) -> int:
    """Stop what is left of the local Ray of an earlier driver of this study that died
    (recorded by :func:`record_local_ray`); returns how many processes were stopped.

    A process counts only if its pid still has the recorded start time (not a reused
    pid). A recorded driver that is still alive is another run in progress: left alone.
    """
    path = os.path.join(run_dir, LOCAL_RAY_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return 0
    driver_pid, driver_start = record.get("driver", [None, None])
    if driver_pid and _start_time(driver_pid) == driver_start and driver_pid != os.getpid():
        return 0
    alive = [(pid, start) for pid, start in record.get("processes", []) if _start_time(pid) == start]
    for pid, _ in alive:
        try:
            os.kill(pid, signal.SIGKILL)  # orphans of a dead session; they ignore SIGTERM for seconds
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_start_time(pid) == start for pid, start in alive):
        time.sleep(0.1)
    forget_local_ray(run_dir)
    return len(alive)
