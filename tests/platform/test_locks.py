"""Creating a SQLite database's tables one process at a time (platform.track.locks): two drivers
that open a new results.db and mlflow.db at the same moment both come up.
(Two whole studies at once: tests/platform/test_concurrent_studies.py.)"""
import os
import subprocess
import sys
import threading
import time

import pytest

from platform.track.locks import creating, sqlite_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Opens the store and a StudyTracker (MLflow's tables) on a fresh runs directory once the file GO
# exists, so that both processes, their imports done, open the databases at the same moment.
OPEN = """
import os, sys, time
from platform.track.store import Store
from platform.track.tracking import StudyTracker
root, name = sys.argv[1], sys.argv[2]
open(os.path.join(root, name + ".ready"), "w").close()
while not os.path.exists(os.path.join(root, "GO")):
    time.sleep(0.001)
Store(f"sqlite:///{root}/results.db")
StudyTracker(f"sqlite:///{root}/mlflow.db", name, f"{root}/mlartifacts")
"""


def test_sqlite_file_is_the_database_path_of_a_sqlite_url_only():
    assert sqlite_file("sqlite:////abs/runs/mlflow.db") == "/abs/runs/mlflow.db"
    assert sqlite_file("sqlite:///runs/results.db") == os.path.join(os.getcwd(), "runs", "results.db")
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://u@h/db") is None and sqlite_file("http://127.0.0.1:5000") is None


def test_creating_holds_a_second_opener_until_the_first_is_done(tmp_path):
    db = str(tmp_path / "sub" / "x.db")
    order = []

    def second():
        with creating(db):
            order.append("second")

    with creating(db):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)  # the second one is blocked on the lock all this time
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second"]
    assert os.path.exists(db + ".lock") and not os.path.exists(db)  # the lock is a file of its own
    with creating(None):  # no file: nothing to hold
        pass


@pytest.mark.slow  # two processes importing MLflow: 5 to 25 s on the shared 2 cores
def test_two_drivers_opening_new_databases_at_once_both_come_up(tmp_path):
    # The same two openers without the lock failed in 3 tries of 3 (table ... already exists, in the
    # store or in MLflow's migrations).
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(tmp_path), name], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{n}.ready").exists() for n in ("a", "b")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "GO").touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
