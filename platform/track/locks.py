"""One process at a time creating a SQLite database's tables.

Two drivers started together on one runs directory (two studies) open the same
``results.db`` and ``mlflow.db``. Their writes wait for each other through
SQLite's own locking (the store's busy_timeout; MLflow 3 sets one on each of its
sessions), but creating the tables of a new database is check-then-create: both
processes see no tables and the second one's CREATE fails (MLflow's migrations:
``table _alembic_tmp_experiments already exists``). An exclusive lock on a file
beside the database, held while a process opens it and creates what is missing,
makes the second process wait and then find the tables made.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator, Optional

from sqlalchemy.engine import make_url


def sqlite_file(url: str) -> Optional[str]:
    """The absolute path of the database file of a SQLite URL
    (``sqlite:///runs/mlflow.db`` -> ``<cwd>/runs/mlflow.db``); None for any other URL or an in-memory one."""
    if not url.startswith("sqlite:"):
        return None
    db = make_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return os.path.abspath(db)


@contextlib.contextmanager
def creating(db_file: Optional[str]) -> Iterator[None]:
    """Hold ``<db_file>.lock`` exclusively (waiting for another process that holds it); nothing for None.

    A separate file, not the database: closing any descriptor of the database file would drop
    the POSIX locks SQLite holds on it in this process."""
    if db_file is None:
        yield
        return
    os.makedirs(os.path.dirname(db_file), exist_ok=True)
    with open(db_file + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
