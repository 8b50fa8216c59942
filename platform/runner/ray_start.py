"""Ray for a run of the driver: connected to a cluster or started locally, and its log lines kept
in the run directory's ``ray.log`` instead of the terminal (``platform.runner.orchestrate``)."""
from __future__ import annotations

import logging
import os
import socket
import sys

from platform.runner.cluster import record_local_ray, stop_stale_local_ray

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ray_logs_to_file(path: str) -> None:
    """Ray's own log lines go to a file under the run directory, not the terminal."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # Tune's newer console output prints tables whatever the verbosity; the
    # classic one honours verbose=0, and ProgressCallback prints instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # ray.init() resets the "ray" logger's handlers, so this runs again after it; the
    # start-up auth notice comes from a child logger during init, hence named here.
    for name in ("ray", "ray.tune", "ray.train", "ray.data",
                 "ray._private.authentication.authentication_token_setup"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
    worker = sys.modules.get("ray._private.worker")
    if worker is not None and hasattr(worker, "print_to_stdstream"):
        # The messages Ray pushes to the driver (a worker or node died: a paragraph each) are
        # printed by its listener thread through this function whatever log_to_driver says;
        # the progress line of the trial says it in one line (platform.runner.failures).
        worker.print_to_stdstream = ray_message_to_log


def ray_message_to_log(data: dict, ignore_prefix: bool = False) -> None:
    """Ray's stand-in for printing a message to the driver's terminal: into ray.log instead."""
    lines = "\n".join(str(ln) for ln in data.get("lines", []))
    logging.getLogger("ray").warning("(%s) %s", data.get("pid", "ray"), lines)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at: ray.init would retry for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"expected HOST:PORT, ray://HOST:PORT or auto, got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None


def start_ray(address: str | None, run_dir: str) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray with this machine's CPUs
    (after stopping what a killed earlier driver of this study left of its own)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    if address:
        check_reachable(address)
        # Ship the worker package to the cluster; driver code never travels.
        ray.init(address=address, runtime_env={"py_modules": [os.path.join(REPO_ROOT, "detectors")]}, **kwargs)
    else:
        stopped = stop_stale_local_ray(run_dir)
        if stopped:
            print(f"stopped {stopped} processes left of the local Ray of an earlier run that was killed")
        # "local": always a fresh Ray of our own, never a cluster some earlier `ray start` left registered
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
        record_local_ray(run_dir)
