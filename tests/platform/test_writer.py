"""The tracker's writer thread (``platform.track.writer``): order, pending run ids, batched epochs, errors."""
import pickle
import threading

import pytest

from platform.track.writer import Pending, TrackerWriter, _groups


class _Tracker:
    """Records each call in order; start_child hands out run ids r1, r2, ..."""

    def __init__(self, gate=None):
        self.calls, self.n, self.gate = [], 0, gate

    def start_child(self, spec):
        if self.gate is not None:
            self.gate.wait()
        self.n += 1
        self.calls.append(("start_child", spec))
        return f"r{self.n}"

    def log_metrics(self, run_id, metrics, step):
        self.calls.append(("log_metrics", run_id, step))

    def log_steps(self, run_id, steps):
        self.calls.append(("log_steps", run_id, sorted(steps)))

    def end_child(self, run_id, status):
        self.calls.append(("end_child", run_id, status))

    def boom(self):
        raise ValueError("no")


def test_writes_run_in_order_with_run_ids_resolved_and_queued_epochs_batched():
    gate = threading.Event()
    tracker = _Tracker(gate)
    writer = TrackerWriter(tracker)
    a = writer.call("start_child", "a")   # the thread waits here until the gate opens,
    b = writer.call("start_child", "b")   # so everything below is queued behind it
    for step in (8, 16):
        writer.call("log_metrics", a, {"loss": 1.0}, step)
        writer.call("log_metrics", b, {"loss": 1.0}, step)
    writer.call("end_child", a, "FINISHED")
    writer.call("log_metrics", b, {"loss": 0.5}, 24)
    assert not a.done()
    gate.set()
    writer.flush()
    assert (a.result(), b.value) == ("r1", "r2")
    # the first start_child ran alone (the queue was empty); the rest came as one batch: a's two
    # epochs and b's two interleaved ones are one log_batch per run, each where its run's first stood;
    # the end of a keeps its place, and b's epoch after it is a batch of its own
    assert tracker.calls == [("start_child", "a"), ("start_child", "b"), ("log_steps", "r1", [8, 16]),
                             ("log_steps", "r2", [8, 16]), ("end_child", "r1", "FINISHED"),
                             ("log_metrics", "r2", 24)]
    writer.close()


def test_groups_keep_other_writes_in_place():
    run = Pending()
    batch = [("log_metrics", (run, {}, 1), {}, None), ("log_metrics", ("x", {}, 1), {}, None),
             ("log_metrics", (run, {}, 2), {}, None), ("end_child", (run, "FINISHED"), {}, None),
             ("log_metrics", (run, {}, 3), {}, None)]
    sizes = [len(g) for g in _groups(batch)]
    assert sizes == [2, 1, 1, 1]  # run's steps 1 and 2 together; x alone; the end; step 3 after it


def test_an_error_is_raised_by_the_next_flush_and_the_writes_after_it_still_run():
    tracker = _Tracker()
    writer = TrackerWriter(tracker)
    failed = writer.call("boom")
    run = writer.call("start_child", "a")
    with pytest.raises(ValueError, match="no"):
        writer.flush()
    assert failed.result() is None and run.result() == "r1"
    writer.flush()  # raised once
    writer.close()


def test_writer_and_pending_pickle_without_their_thread():
    writer = TrackerWriter(_Tracker())
    run = writer.call("start_child", "a")
    writer.flush()
    copy, run_copy = pickle.loads(pickle.dumps((writer, run)))
    assert run_copy.done() and run_copy.result() == "r1"
    # the copy writes through its own thread to the tracker copy, which had made r1
    assert copy.call("start_child", "b").result() == "r2"
    writer.close()
    copy.close()
