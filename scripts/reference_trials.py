"""Run the reference trials of a reshaping change and write every report they make, to compare with ==.

    python scripts/reference_trials.py before.json      # on the commit before the change
    python scripts/reference_trials.py after.json       # after it
    cmp before.json after.json                          # identical: the change moved no result

Eleven short trials cover every detector family, the loss and optimizer paths and the
multi-phase loop: RetinaNet with focal loss and with balanced CE (inverse-frequency
alpha, SGD, multistep), the dense presets (GFL, ATSS, FCOS) and two dense variants
(IoU quality + Gaussian boxes + max-IoU assignment; a general distribution of 8
bins), SSD, YOLOv1, Faster R-CNN's 4-step alternating training and Fast R-CNN. Each
trains 2 epochs on 32 generated images and is evaluated on 12; every per-epoch
report (each raw loss, the weighted loss, lr, step, epoch, phase, the val AP
family) and the final metrics are written, minus wall-clock figures. Run from the
repository root; about 20 s on 2 cores.
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.getcwd())

from detectors.data.synthetic import generate  # noqa: E402
from detectors.train.run import run_trial  # noqa: E402
from detectors.train.trial import make_trial  # noqa: E402

FOCAL = {"name": "focal", "params": {"gamma": 2.0, "alpha": 0.25}}
SOFTMAX = {"name": "softmax_ce", "params": {}}
TRIALS = {
    "retinanet_focal": dict(),
    "retinanet_bce_invfreq_sgd": dict(loss={"name": "balanced_ce", "params": {"alpha": "inverse_frequency"}},
                                      train={"optimizer": "sgd", "schedule": "multistep", "lr": 0.01}),
    "gfl": dict(detector={"name": "gfl"}, loss={"name": "qfl"}),
    "atss": dict(detector={"name": "atss"}),
    "fcos": dict(detector={"name": "fcos"}),
    "dense_iou_gauss_maxiou": dict(detector={"name": "dense", "params": {
        "assigner": "max_iou", "quality": "iou", "box": "gaussian"}}, loss=FOCAL),
    "dense_general_8": dict(detector={"name": "dense", "params": {"box": "general", "reg_max": 8}},
                            loss={"name": "qfl"}),
    "ssd": dict(detector={"name": "ssd"}, loss=SOFTMAX),
    "yolo": dict(detector={"name": "yolov1"}, loss={"name": "sse"}),
    "faster_alt": dict(detector={"name": "faster_rcnn", "params": {
        "training": "alternating", "alternating_epochs": [1, 1, 1, 1]}}, loss=SOFTMAX),
    "fast_rcnn": dict(detector={"name": "fast_rcnn"}, loss=SOFTMAX),
}
WALL_CLOCK = ("speed/", "train/img_s", "train/time_s")


def main(out: str) -> int:
    cache = tempfile.mkdtemp(prefix="reference-trials-")
    paths = generate({"num_train": 32, "num_val": 12}, cache)
    results = {}
    for name, given in TRIALS.items():
        given = dict(given)
        train = {"epochs": 2, "batch_size": 8, **given.pop("train", {})}
        trial = make_trial(paths, tempfile.mkdtemp(dir=cache), train=train,
                           evaluation={"speed": {"enabled": False}}, **given)
        reports = []
        run_trial(trial, lambda m, ckpt, reports=reports: reports.append(
            {k: v for k, v in m.items() if not k.startswith(WALL_CLOCK)}))
        results[name] = reports
        print(f"{name}: {len(reports)} reports", flush=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
