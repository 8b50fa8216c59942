"""Helpers for the scale-out tests and fault drills: the CLI as a process whose output is
watched line by line (with the time each line came), study files, Ray processes by role."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_study(path, root, name="drill", gammas=(2,), epochs=3, num_train=16, **sections):
    """The smoke study with ``epochs`` full epochs (no max_steps) on ``num_train`` images, under ``root``;
    ``sections`` replace or extend top-level keys (``resources``, ``tracking``...)."""
    with open(os.path.join(REPO, "studies", "smoke.yaml")) as f:
        study = yaml.safe_load(f)
    study["name"] = name
    study["sweep"]["grid"] = {"loss.params.gamma": list(gammas)}
    study["train"].update(epochs=epochs, max_steps=None)
    study["dataset"]["synthetic"]["num_train"] = num_train
    study["output"] = {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports")}
    # the drills are about faults: every trial times itself as it finishes, with no speed
    # phase waiting for a free node after the trials (that phase has its own tests)
    study["eval"]["speed"]["isolated"] = False
    for key, value in sections.items():
        study[key] = {**study.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(study))
    return str(path)


class Driver:
    """``python -m platform.run ARGS`` in its own session; ``lines`` are (seconds since start, text)."""

    def __init__(self, *args, env=None):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "platform.run", *args], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))

    def wait_for(self, text, timeout=240.0, after=0):
        """The first line at index >= ``after`` containing ``text``: (index, seconds, line)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (t, line) in enumerate(list(self.lines)[after:], start=after):
                if text in line:
                    return i, t, line
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"exited ({self.proc.returncode}) before printing {text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in {timeout:.0f} s:\n{self.output}")
            time.sleep(0.05)

    def finish(self, timeout=300.0):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running after {timeout:.0f} s:\n{self.output}") from None
        self._reader.join(timeout=10)
        return self.proc.returncode

    def now(self):
        return time.monotonic() - self.t0

    @property
    def output(self):
        return "\n".join(line for _, line in self.lines)


def ray_processes(root_pid, title):
    """Descendants of ``root_pid`` whose process title is ``ray::<title>...`` (Ray names its workers so)."""
    found = []
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            if p.name().startswith(f"ray::{title}") or " ".join(p.cmdline()).startswith(f"ray::{title}"):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def continued(epochs, last):
    """A trial's progress with retries (None) in it went on from where each attempt stopped: at least one
    retry, and its epochs 1, 2, ..., ``last`` each once (a restart from scratch would say "epoch 1" again)."""
    return None in epochs and [e for e in epochs if e is not None] == list(range(1, last + 1))


def epochs_of(output, key):
    """The epoch numbers the progress lines report for trial ``key``, in order (with a "retry" as None)."""
    out = []
    for line in output.splitlines():
        if f"{key}: epoch " in line:
            out.append(int(line.split(f"{key}: epoch ", 1)[1].split(",", 1)[0]))
        elif f"retry  {key}" in line:
            out.append(None)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """``ray start --block`` as a node of a test cluster on this machine: its own session, temp dir and
    ports, 127.0.0.1 as its address. ``head=None`` starts a head; else joins ``head`` (``HOST:PORT``).

    The cluster's address is given as 127.0.0.2: Ray rewrites 127.0.0.1 and localhost to the machine's
    network address, and any address in 127.0.0.0/8 reaches a server listening on all of them.
    Ray's token authentication: every node and the driver share ``env``'s token.
    """

    def __init__(self, log, env, head=None, cpus=1):
        # its own temp dir, short: Ray's socket paths under it must fit in 107 bytes
        self.temp_dir, self.log = tempfile.mkdtemp(prefix="detbench-ray-"), str(log)
        args = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--block",
                "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--temp-dir", self.temp_dir,
                "--disable-usage-stats"]
        for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"):
            args += [flag, str(free_port())]
        if head is None:
            port = free_port()
            args += ["--head", "--port", str(port), "--include-dashboard", "false"]
            self.address = f"127.0.0.2:{port}"
        else:
            args += ["--address", head]
            self.address = head
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.started = []  # every process seen under it, for the teardown

    def wait_started(self, timeout=120.0):
        """Until ``ray start`` says the node runs (a joining node: registered with the head)."""
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in open(self.log, errors="replace").read():
            assert self.proc.poll() is None, f"ray start exited:\n{open(self.log, errors='replace').read()[-3000:]}"
            assert time.monotonic() < deadline, f"node not up in {timeout:.0f} s"
            time.sleep(0.3)
        self.remember()

    def remember(self):
        try:
            self.started += psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass

    def stop(self):
        """SIGTERM to its session (what `ray stop` sends, on this node only), then SIGKILL to whatever
        of it is left after ``wait`` seconds. Nothing else on the machine is touched."""
        self.remember()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass

    def wait_stopped(self, wait=30.0):
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        for p in self.started:  # psutil checks that the pid is still that process
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(self.started, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return alive
