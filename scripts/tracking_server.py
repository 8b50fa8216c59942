"""Shared tracking services on one machine: PostgreSQL and an MLflow tracking server on it.

    python scripts/tracking_server.py start --dir runs/services [--pg-port 5432] [--mlflow-port 5000]
    python scripts/tracking_server.py stop --dir runs/services

``start`` runs Debian's PostgreSQL (``apt-get install postgresql``: ``initdb``, ``pg_ctl``
from PATH or ``/usr/lib/postgresql/<version>/bin``) in a fresh data directory with two
databases, ``mlflow`` (MLflow's tables) and ``detbench`` (the results store: both have a
table named ``metrics``, so they never share one), and ``mlflow server`` with the first as
its backend store and ``DIR/mlartifacts`` as its artifact store (uploads go through the
server). Both listen on 127.0.0.1 only (``--host`` to change); PostgreSQL takes TCP only,
with a password generated here. It prints the two study-file keys that use them::

    tracking:
      mlflow_uri: http://127.0.0.1:5000
      store_url: postgresql+psycopg://detbench:<password>@127.0.0.1:5432/detbench

and keeps what ``stop`` needs in ``DIR/services.json``. ``stop`` ends both and removes the
data directory (``--keep`` keeps it: ``start --data-dir`` takes it up again).
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user
(Debian's package makes it), and its data directory is made outside ``DIR`` where that
user can reach it. Port 0 picks a free port. Needs the ``cluster`` extra (psycopg).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict, List, Optional

STATE_FILE = "services.json"
USER = "detbench"
DATABASES = ("mlflow", "detbench")


def pg_bin(name: str) -> str:
    """A PostgreSQL program: from PATH, else Debian's versioned directory (newest version)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not candidates:
        raise FileNotFoundError(f"PostgreSQL's {name} not found: install Debian's package "
                                f"(apt-get install -y postgresql)")
    return candidates[-1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _as_server_user(cmd: List[str]) -> List[str]:
    """PostgreSQL will not run as root: root runs it as ``postgres``."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: List[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")


def start_postgres(data_dir: Optional[str], port: int, host: str = "127.0.0.1") -> Dict:
    """Initialise (if new) and start PostgreSQL; create the two databases. Returns its state."""
    fresh = data_dir is None or not os.path.exists(os.path.join(data_dir, "PG_VERSION"))
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="detbench-pg-")  # /tmp: reachable by the postgres user
    os.makedirs(data_dir, exist_ok=True)
    secret_file = os.path.join(data_dir, "detbench.secret")
    if fresh:
        password = secrets.token_hex(12)
        pwfile = os.path.join(tempfile.mkdtemp(prefix="detbench-pw-"), "pw")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(os.path.dirname(pwfile), "postgres")
            shutil.chown(pwfile, "postgres")
            shutil.chown(data_dir, "postgres")
        _run(_as_server_user([pg_bin("initdb"), "-D", data_dir, "-U", USER, "--pwfile", pwfile,
                              "--auth", "scram-sha-256", "-E", "UTF8", "--no-instructions"]))
        shutil.rmtree(os.path.dirname(pwfile), ignore_errors=True)
        with open(secret_file, "w") as f:
            f.write(password)
    with open(secret_file) as f:
        password = f.read().strip()
    port = port or free_port(host)
    log = os.path.join(data_dir, "server.log")
    # TCP on one address only, no Unix socket: nothing else on the machine is touched
    options = f"-c listen_addresses={host} -c port={port} -c unix_socket_directories=''"
    _run(_as_server_user([pg_bin("pg_ctl"), "-D", data_dir, "-l", log, "-o", options, "-w", "-t", "60", "start"]))
    url = f"postgresql+psycopg://{USER}:{password}@{host}:{port}"
    import psycopg

    with psycopg.connect(f"postgresql://{USER}:{password}@{host}:{port}/postgres", autocommit=True) as conn:
        have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for db in DATABASES:
            if db not in have:
                conn.execute(f"CREATE DATABASE {db}")
    return {"data_dir": data_dir, "port": port, "host": host, "url": url}


def stop_postgres(state: Dict, keep: bool = False) -> None:
    subprocess.run(_as_server_user([pg_bin("pg_ctl"), "-D", state["data_dir"], "-m", "fast", "-w", "stop"]),
                   capture_output=True)
    if not keep:
        shutil.rmtree(state["data_dir"], ignore_errors=True)


def start_mlflow(backend_uri: str, artifacts: str, port: int, log_path: str, host: str = "127.0.0.1",
                 timeout: float = 180.0) -> Dict:
    """``mlflow server`` in its own session (its workers stop with it); waits for ``/health``."""
    port = port or free_port(host)
    os.makedirs(artifacts, exist_ok=True)
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [mlflow if os.path.exists(mlflow) else "mlflow", "server", "--host", host, "--port", str(port),
           "--backend-store-uri", backend_uri, "--artifacts-destination", os.path.abspath(artifacts),
           "--workers", "1"]
    # No job runner: MLflow's server jobs (GenAI scorers and the like) are not used by detbench,
    # and they add a handful of processes. A value set by the user wins.
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_session(proc.pid)
            with open(log_path) as f:
                raise RuntimeError(f"mlflow server did not come up on {uri}: {f.read()[-2000:]}")
        time.sleep(0.5)
    return {"pid": proc.pid, "port": port, "host": host, "uri": uri, "backend": backend_uri,
            "artifacts": os.path.abspath(artifacts), "log": log_path}


def _stop_session(pid: int, wait: float = 30.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except OSError:
            return
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def stop_mlflow(state: Dict) -> None:
    _stop_session(state["pid"])


def start(state_dir: str, pg_port: int = 0, mlflow_port: int = 0, host: str = "127.0.0.1",
          data_dir: Optional[str] = None) -> Dict:
    """Both services; returns (and writes to ``state_dir``) their state, with the two URIs."""
    os.makedirs(state_dir, exist_ok=True)
    pg = start_postgres(data_dir, pg_port, host)
    try:
        ml = start_mlflow(f"{pg['url']}/mlflow", os.path.join(state_dir, "mlartifacts"), mlflow_port,
                          os.path.join(state_dir, "mlflow-server.log"), host)
    except Exception:
        stop_postgres(pg, keep=data_dir is not None)
        raise
    state = {"postgres": pg, "mlflow": ml, "mlflow_uri": ml["uri"], "store_url": f"{pg['url']}/detbench"}
    with open(os.path.join(state_dir, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1)
    return state


def stop(state_dir: str, keep: bool = False) -> None:
    with open(os.path.join(state_dir, STATE_FILE)) as f:
        state = json.load(f)
    stop_mlflow(state["mlflow"])
    stop_postgres(state["postgres"], keep=keep)
    os.remove(os.path.join(state_dir, STATE_FILE))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/tracking_server.py",
                                 description="PostgreSQL + an MLflow tracking server for detbench, on this machine.")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start", help="start both; print the study-file keys")
    up.add_argument("--dir", required=True, help="where the state file, logs and MLflow artifacts go")
    up.add_argument("--pg-port", type=int, default=0, help="PostgreSQL's port (default: a free one)")
    up.add_argument("--mlflow-port", type=int, default=5000, help="MLflow's port (default 5000; 0: a free one)")
    up.add_argument("--host", default="127.0.0.1", help="address both listen on (default 127.0.0.1)")
    up.add_argument("--data-dir", help="PostgreSQL data directory to create or take up again (default: a new "
                                       "temporary one, removed by stop)")
    down = sub.add_parser("stop", help="stop both")
    down.add_argument("--dir", required=True)
    down.add_argument("--keep", action="store_true", help="keep PostgreSQL's data directory")
    args = ap.parse_args(argv)
    if args.command == "start":
        state = start(args.dir, args.pg_port, args.mlflow_port, args.host, args.data_dir)
        print("tracking:")
        print(f"  mlflow_uri: {state['mlflow_uri']}")
        print(f"  store_url: {state['store_url']}")
        print(f"PostgreSQL data: {state['postgres']['data_dir']}; stop with: "
              f"python scripts/tracking_server.py stop --dir {args.dir}")
    else:
        stop(args.dir, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
