"""The training loop: exact resume, non-finite guard, reporting, and a measured AP50 floor."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detectors.data.synthetic import generate
from detectors.train import trial as trial_defaults
from detectors.train.run import NonFiniteLossError, load_checkpoint, run_trial

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_trial(tmp_path, data_params, **train):
    """Tiny RetinaNet with focal loss (gamma 2, alpha 0.25), AdamW 1e-3 cosine: the defaults, shorter."""
    paths = generate(data_params, str(tmp_path / "data"))
    return trial_defaults.make_trial(
        paths, str(tmp_path / "trial"), study="t", variant="focal", config_hash="x" * 64,
        train={"epochs": 2, "batch_size": 4, "warmup_iters": 2, "eval_every_epoch": False, **train},
        evaluation={"speed": {"enabled": False}})


SMALL = {"num_train": 12, "num_val": 4, "seed": 3}


class Interrupt(Exception):
    pass


def test_resume_matches_uninterrupted_run(tmp_path):
    trial = make_trial(tmp_path, SMALL, epochs=3)
    reports = []
    run_trial(trial, lambda m, c: reports.append((m, c)))
    straight = torch.load(os.path.join(trial["trial_dir"], "final", "model.pt"), weights_only=True)
    # 3 epoch reports with checkpoints, then the final report with final=1.
    assert [int(m["epoch"]) for m, _ in reports] == [0, 1, 2, 2]
    assert reports[-1][0]["final"] == 1 and "AP50" in reports[-1][0]
    # RetinaNet's assignment figures, averaged over the epoch's batches like the losses: 128 px images have
    # 3069 anchors each (test_retinanet), and the foreground is a small share of those that count.
    assert all(m["train/anchors_per_image"] == 3069 for m, _ in reports[:3])
    assert all(0 < m["train/fg_fraction"] < 0.05 for m, _ in reports[:3])

    # Same trial, "killed" right after the first epoch's checkpoint, then resumed.
    trial2 = dict(trial, trial_dir=str(tmp_path / "trial2"))
    first = []

    def stop_after_first(metrics, ckpt):
        first.append(ckpt)
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(trial2, stop_after_first)
    assert load_checkpoint(first[0])["epoch"] == 0
    run_trial(trial2, None, resume_from=first[0])
    resumed = torch.load(os.path.join(trial2["trial_dir"], "final", "model.pt"), weights_only=True)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_non_finite_loss_names_the_step(tmp_path):
    trial = make_trial(tmp_path, SMALL)
    trial["loss"]["params"]["gamma"] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 0 \(epoch 0\)"):
        run_trial(trial)


def test_max_steps_caps_training_and_final_artifacts_exist(tmp_path):
    trial = make_trial(tmp_path, SMALL, epochs=5, max_steps=2)
    trial["eval"]["speed"] = {"enabled": True, "latency_images": 3, "warmup": 1,
                              "throughput_batch": 2, "throughput_batches": 1}
    final = run_trial(trial)
    assert final["step"] == 2
    out = os.path.join(trial["trial_dir"], "final")
    with open(os.path.join(out, "eval.json")) as f:
        ev = json.load(f)
    assert set(ev["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}
    assert len(ev["per_class_ap"]) == 5
    with open(os.path.join(out, "speed.json")) as f:
        speed = json.load(f)
    assert speed["latency_ms_p50"] > 0 and speed["gflops"] > 0 and speed["params"] > 1e5
    assert final["speed/train_img_s"] > 0
    assert os.path.exists(os.path.join(out, "detections.json"))


def test_cli_runs_a_trial_file(tmp_path):
    trial = make_trial(tmp_path, SMALL, epochs=1, max_steps=1)
    path = tmp_path / "trial.json"
    path.write_text(json.dumps(trial))
    proc = subprocess.run([sys.executable, "-m", "detectors.train", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines[-1]["final"] == 1 and lines[-1]["step"] == 1


@pytest.mark.slow  # a whole trial end to end: 600 steps, then COCO evaluation
def test_tiny_retinanet_learns_to_an_ap50_floor(tmp_path):
    # Measured (2026-11-22, 1 thread): 600 steps (200 images x 12 epochs, batch 4) reach
    # AP50 0.199 (seed 0) and 0.190 (seed 1) on this generated set in about 22 s; an
    # untrained model scores 0.0. The floor is half the measured value.
    trial = make_trial(tmp_path, {"num_train": 200, "num_val": 50, "seed": 11}, epochs=12, lr=2e-3,
                       warmup_iters=30)
    final = run_trial(trial)
    assert final["step"] == 600
    assert final["AP50"] >= 0.10
