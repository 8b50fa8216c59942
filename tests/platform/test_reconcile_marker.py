"""platform.track.reconcile's record that MLflow and the store are in step: what makes a run check MLflow again."""
import os

from detectors.train.trial import make_trial
from platform.track.reconcile import PENDING_FILE, in_sync, mark_synced, note_pending_parent
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
        # another MLflow, or a tracking server (nothing cheap says it did not change): check
        assert not in_sync(store, "s", f"sqlite:///{tmp_path}/other.db", run_dir)
        mark_synced(store, "s", "http://127.0.0.1:5000", run_dir)
        assert not os.path.exists(os.path.join(run_dir, "mlflow_synced.json"))
        assert not in_sync(store, "s", "http://127.0.0.1:5000", run_dir)
