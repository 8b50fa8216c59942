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
