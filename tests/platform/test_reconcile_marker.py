"""platform.track.reconcile's record that MLflow and the store are in step: what makes a run check MLflow again
(an SQLite file, or a tracking server through its experiment's tag)."""
import json
import os
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from detectors.train.trial import make_trial
from platform.track.reconcile import (
    PENDING_FILE, SYNC_FILE, SYNC_TAG, in_sync, mark_synced, note_pending_parent, server_tag,
)
from platform.track.store import Store

PATHS = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}


def finished_trial(store, seed):
    t = make_trial(PATHS, f"/tmp/t{seed}", seed=seed, variant="v", study="s", config_hash=str(seed).ljust(64, "0"))
    store.record_finished("s", t, {"AP": 0.5}, [], {}, None, 0.0, 1.0)
    return t


def test_mlflow_is_checked_again_when_the_store_the_file_or_a_pending_status_changes(tmp_path):
    run_dir = str(tmp_path / "s")
    os.makedirs(run_dir)
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"x")
    uri = f"sqlite:///{db}"
    with Store(f"sqlite:///{tmp_path}/r.db") as store:
        store.upsert_study("s", "", {}, None)
        finished_trial(store, 0)
        assert not in_sync(store, "s", uri, run_dir)  # never marked
        mark_synced(store, "s", uri, run_dir)
        assert in_sync(store, "s", uri, run_dir)
        # a trial finished into the store (say, while MLflow was down): check
        finished_trial(store, 1)
        assert not in_sync(store, "s", uri, run_dir)
        mark_synced(store, "s", uri, run_dir)
        assert in_sync(store, "s", uri, run_dir)
        # MLflow's file written by someone else (the UI, another study) or deleted: check
        os.utime(db, ns=(1, 1))
        assert not in_sync(store, "s", uri, run_dir)
        mark_synced(store, "s", uri, run_dir)
        db.unlink()
        assert not in_sync(store, "s", uri, run_dir)
        db.write_bytes(b"x")
        mark_synced(store, "s", uri, run_dir)
        # an invocation that could not tell MLflow how it ended: check
        note_pending_parent(run_dir, "run1", "FINISHED")
        assert not in_sync(store, "s", uri, run_dir)
        os.remove(os.path.join(run_dir, PENDING_FILE))
        assert in_sync(store, "s", uri, run_dir)
        # another MLflow: check
        assert not in_sync(store, "s", f"sqlite:///{tmp_path}/other.db", run_dir)


class Tracker:
    """What mark_synced asks of a StudyTracker on a server: set the experiment's tag (False: offline)."""

    def __init__(self, ok=True):
        self.ok, self.tags = ok, {}

    def set_experiment_tag(self, key, value):
        self.tags[key] = value
        return self.ok


@contextmanager
def experiments_api(tags):
    """An HTTP server answering MLflow's ``experiments/get-by-name`` for experiment "s" with ``tags``
    (the REST shape of MLflow 3: ``{"experiment": {..., "tags": [{"key", "value"}]}}``), 404 otherwise."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            name = urllib.parse.parse_qs(url.query).get("experiment_name")
            if url.path != "/api/2.0/mlflow/experiments/get-by-name" or name != ["s"]:
                self.send_error(404)
                return
            body = json.dumps({"experiment": {"experiment_id": "1", "name": "s",
                                              "tags": [{"key": k, "value": v} for k, v in tags.items()]}})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_tracking_server_is_in_step_when_its_experiment_carries_the_last_syncs_tag(tmp_path):
    run_dir = str(tmp_path / "s")
    os.makedirs(run_dir)
    tags = {"detbench.kind": "training"}
    with Store(f"sqlite:///{tmp_path}/r.db") as store, experiments_api(tags) as uri:
        store.upsert_study("s", "", {}, None)
        finished_trial(store, 0)
        assert not in_sync(store, "s", uri, run_dir)  # never marked
        tracker = Tracker()
        mark_synced(store, "s", uri, run_dir, tracker)
        tags.update(tracker.tags)  # what the tracker wrote, the server now holds
        assert in_sync(store, "s", uri, run_dir)
        assert server_tag(uri, "s") == tracker.tags[SYNC_TAG] and server_tag(uri, "other") is None
        # a trial finished into the store: check
        finished_trial(store, 1)
        assert not in_sync(store, "s", uri, run_dir)
        mark_synced(store, "s", uri, run_dir, tracker)
        tags.update(tracker.tags)
        assert in_sync(store, "s", uri, run_dir)
        # a server that lost the tag (a fresh database behind the same address): check
        del tags[SYNC_TAG]
        assert not in_sync(store, "s", uri, run_dir)
        # a tracker that could not tell the server: no marker, and the next run checks
        mark_synced(store, "s", uri, run_dir, Tracker(ok=False))
        assert not os.path.exists(os.path.join(run_dir, SYNC_FILE))
        mark_synced(store, "s", uri, run_dir, tracker)
        tags.update(tracker.tags)
        assert in_sync(store, "s", uri, run_dir)
    # the server gone: check (the request fails at once: nothing listens there now)
    assert not in_sync(Store(f"sqlite:///{tmp_path}/r.db"), "s", uri, run_dir)
