"""The study tracker's writes on a thread of their own, so that Ray Tune's event loop never waits on MLflow.

(The study callback also runs its other work that may lag, the error breakdown of finished trials, on
a ``TrackerWriter`` of another object: any object's methods run this way.)

    writer = TrackerWriter(tracker)            # a platform.track.tracking.StudyTracker
    run = writer.call("start_child", spec)     # a Pending: the run id once the thread got to it
    writer.call("log_metrics", run, {"loss": 0.5}, 8)   # a Pending argument is the value it resolved to
    writer.flush()                             # every write so far done (before the parent run ends)

The driver's Tune callback (``platform.runner.callbacks``) made one MLflow write per epoch report and a
few per trial, each 15-50 ms on a SQLite file at a loaded machine's pace, all inside Tune's loop, which
schedules nothing meanwhile. Here they go into a queue that one thread drains in order, so the writes
of a run keep their order and the driver is still MLflow's only writer. Per-epoch metrics of a run queued
before the thread gets to them go to MLflow in one ``log_batch`` (the thread falls behind only when MLflow is
slower than the trials report).

What it does not change: the results store is written in the callback itself (the store is the
record; MLflow is its view). A driver killed with writes still queued loses them from MLflow only,
and the next run's reconcile (``platform.track.reconcile``) completes those runs from the store, as it
does after an outage. A failing write turns the tracker offline as before (its ``_tolerant`` methods);
any other exception is raised again by the next :meth:`flush`.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Dict, List, Optional, Tuple

_STOP = object()


class Pending:
    """A write's result, once the writer thread ran it (``value``); :meth:`result` waits for it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.value: Any = None

    # pickles as its value (Tune may pickle the callback holding it)
    def __getstate__(self) -> dict:
        return {"value": self.value}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.set(state["value"])

    def set(self, value: Any) -> None:
        self.value = value
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: Optional[float] = None) -> Any:
        self._done.wait(timeout)
        return self.value


def _resolve(value: Any) -> Any:
    return value.value if isinstance(value, Pending) else value


class TrackerWriter:
    """One thread (started at the first write) running a tracker's methods in the order they were called."""

    def __init__(self, tracker, name: str = "mlflow-writer") -> None:
        self.tracker, self.name = tracker, name
        self._init()

    def _init(self) -> None:
        self._queue: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    # Tune pickles its callbacks with the experiment: the writer pickles as its tracker, and a
    # copy starts a thread of its own when written to.
    def __getstate__(self) -> dict:
        return {"tracker": self.tracker, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.tracker, self.name = state["tracker"], state["name"]
        self._init()

    def call(self, method: str, *args, **kwargs) -> Pending:
        """Queue ``tracker.<method>(*args, **kwargs)``; ``Pending`` arguments are resolved when it runs."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name=self.name, daemon=True)
            self._thread.start()
        pending = Pending()
        self._queue.put((method, args, kwargs, pending))
        return pending

    def flush(self) -> None:
        """Wait until every write queued so far ran; raise the first error a write raised."""
        if self._thread is not None:
            self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Flush, then stop the thread (a later write starts another)."""
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join()
                self._thread = None

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            batch = [item]
            while True:  # whatever else is queued now: consecutive metrics of a run become one batch
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)  # after this batch
                    self._queue.task_done()
                    break
                batch.append(nxt)
            for group in _groups(batch):
                self._run(group)
            for _ in batch:
                self._queue.task_done()

    def _run(self, group: List[Tuple]) -> None:
        method, args, kwargs, _ = group[0]
        try:
            if method == "log_metrics" and len(group) > 1:
                steps: Dict[int, Dict[str, float]] = {}
                for _, (_, metrics, step), _, _ in group:
                    steps.setdefault(int(step), {}).update(metrics)
                value = self.tracker.log_steps(_resolve(args[0]), steps)
            else:
                value = getattr(self.tracker, method)(*[_resolve(a) for a in args],
                                                      **{k: _resolve(v) for k, v in kwargs.items()})
        except BaseException as exc:  # kept for flush(); the thread goes on with the next write
            value = None
            if self._error is None:
                self._error = exc
        for *_, pending in group:
            pending.set(value)


def _groups(batch: List[Tuple]) -> List[List[Tuple]]:
    """``batch`` in order, with the ``log_metrics(run, metrics, step)`` calls of a run that come before
    the next call of another kind (trials report side by side, so a run's epochs interleave with
    another's) gathered into one group, which runs where its first call stood."""
    groups: List[List[Tuple]] = []
    open_runs: Dict[Any, List[Tuple]] = {}
    for item in batch:
        method, args, kwargs = item[:3]
        if method == "log_metrics" and not kwargs and len(args) == 3:
            group = open_runs.get(id(args[0]) if isinstance(args[0], Pending) else args[0])
            if group is not None:
                group.append(item)
                continue
            group = [item]
            open_runs[id(args[0]) if isinstance(args[0], Pending) else args[0]] = group
            groups.append(group)
        else:
            open_runs.clear()  # a write of another kind keeps its place after every metric before it
            groups.append([item])
    return groups
