"""The driver callback's helpers that need no Ray run."""
import json

from platform.runner.callbacks import val_ground_truth


def test_val_ground_truth_reads_what_box_ap_needs_from_the_val_file(tmp_path):
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({
        "images": [{"id": 4, "width": 64, "height": 48, "file_name": "4.png"}],
        "annotations": [{"id": 1, "image_id": 4, "category_id": 2, "bbox": [1, 2, 3, 5],
                         "segmentation": [[1, 2, 4, 2, 4, 7]]}],
        "categories": [{"id": 2, "name": "circle"}]}))
    gt = val_ground_truth({"dataset": {"val_annotations": str(path)}})
    # file name and polygon dropped; iscrowd 0 and area 3 * 5 = 15 filled in
    assert gt == {"images": [{"id": 4, "width": 64, "height": 48}],
                  "annotations": [{"id": 1, "image_id": 4, "category_id": 2, "bbox": [1, 2, 3, 5],
                                   "area": 15.0, "iscrowd": 0}],
                  "categories": [{"id": 2, "name": "circle"}]}
    assert val_ground_truth({"dataset": {"val_annotations": str(tmp_path / "gone.json")}}) is None
    assert val_ground_truth({"dataset": {"val_annotations": None}}) is None


def test_the_study_callback_reads_a_val_file_once_until_it_changes(tmp_path):
    from platform.runner.callbacks import StudyCallback

    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    spec = {"dataset": {"val_annotations": str(path)}}
    cb = StudyCallback("s", None, None)
    first = cb._val_ground_truth(spec)
    assert cb._val_ground_truth(spec) is first  # the same object: the store dumps it once too
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 2, "name": "b"}]}))
    assert cb._val_ground_truth(spec)["categories"] == [{"id": 2, "name": "b"}]  # its size changed: read again


def test_a_finished_trials_error_breakdown_is_stored_beside_its_record(tmp_path):
    from types import SimpleNamespace

    from dashboards.errors import ERRORS_KEY, trial_errors
    from platform.runner.callbacks import StudyCallback
    from platform.track.store import Store

    gt = {"images": [{"id": 1, "width": 64, "height": 64}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}]}
    (tmp_path / "val.json").write_text(json.dumps(gt))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "detections.json").write_text(json.dumps(dets))
    spec = {"trial_key": "v/seed=0", "variant": "v", "seed": 0, "config_hash": "a" * 64,
            "dataset": {"val_annotations": str(tmp_path / "val.json")}}
    store = Store(f"sqlite:///{tmp_path}/results.db")
    store.upsert_study("s", "", {}, None)
    tracker = SimpleNamespace(start_child=lambda *a, **k: "run1", log_dict=lambda *a: None,
                              log_artifacts=lambda *a: None, log_metrics=lambda *a: None,
                              end_child=lambda *a, **k: None)
    cb = StudyCallback("s", tracker, store)
    t = SimpleNamespace(trial_id="t", config={"trial": spec}, last_result={"AP": 1.0, "final": 1},
                        checkpoint=SimpleNamespace(path=str(ckpt)), error_file=None)
    cb.on_trial_start(0, [t], t)
    cb.on_trial_complete(0, [t], t)
    cb.flush()  # the breakdown is the callback's second thread's
    # one detection on the one box: AP50 1, no error of any type
    stored = store.trial_data("s", ERRORS_KEY)["v/seed=0"]
    assert stored == trial_errors(val_ground_truth(spec), dets) and stored["AP50"] == 1.0
    assert store.trial_data("s", "detections")["v/seed=0"] == dets
    assert store.trial_epochs("s", "a" * 64) == {} and store.trials("s")[0]["mlflow_run_id"] == "run1"
    # a trial that is not finished gets no data
    assert not store.record_trial_data("s", "b" * 64, {ERRORS_KEY: {}})
    store.close()
