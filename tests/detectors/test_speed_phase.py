"""detectors.evaluation.speed_phase: which trials share a speed figure, and one isolated measurement end to end."""
import pytest

from detectors.evaluation.speed_phase import key_digest, key_label, measure_alone, speed_key, uses_speed_phase
from detectors.train.trial import make_trial

PATHS = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}


def digest(**kw):
    return key_digest(speed_key(make_trial(PATHS, "/tmp/t", **kw), "code-v1"))


def test_loss_and_seed_share_a_figure_architecture_threads_and_precision_do_not():
    base = digest()
    # a loss sweep: same network, so one figure for every variant and seed
    assert digest(loss={"params": {"gamma": 0.0, "alpha": 0.75}}, seed=3, variant="gamma=0") == base
    assert digest(train={"lr": 0.01, "epochs": 12}) == base  # training length and lr do not change speed
    # what does change it
    assert digest(detector={"params": {"head_convs": 4}}) != base
    assert digest(detector={"scale": "paper"}) != base
    assert digest(num_threads=2) != base
    assert digest(gpus=1) != base
    assert digest(train={"precision": "bf16"}) != base
    assert digest(train={"batch_size": 4}) != base  # training speed is measured at the study batch
    assert digest(evaluation={"score_thresh": 0.3}) != base  # fewer boxes reach NMS
    assert digest(evaluation={"speed": {"latency_images": 10}}) != base  # another measurement
    assert key_digest(speed_key(make_trial(PATHS, "/tmp/t"), "code-v2")) != base  # other code


def test_key_label_and_who_uses_the_phase():
    trial = make_trial(PATHS, "/tmp/t", detector={"params": {"head_convs": 4}}, num_threads=2)
    assert key_label(speed_key(trial)) == "retinanet tiny (head_convs=4), 2 threads, cpu, fp32"
    assert uses_speed_phase(trial)
    assert not uses_speed_phase(make_trial(PATHS, "/tmp/t", evaluation={"speed": {"isolated": False}}))
    assert not uses_speed_phase(make_trial(PATHS, "/tmp/t", evaluation={"speed": {"enabled": False}}))


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    from detectors.data.synthetic import generate

    return generate({"num_train": 8, "num_val": 4}, str(tmp_path_factory.mktemp("data")))


def test_measure_alone_times_inference_and_training_and_names_the_machine(tiny_paths, tmp_path):
    import torch

    from detectors.build import build_detector

    trial = make_trial(tiny_paths, str(tmp_path / "t"), train={"batch_size": 2},
                       evaluation={"speed": {"latency_images": 3, "warmup": 1, "throughput_batch": 2,
                                             "throughput_batches": 1, "repeats": 2, "train_steps": 1}})
    weights = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(build_detector(trial, 5, [1] * 5).state_dict(), weights)
    out = measure_alone(trial, str(weights))
    f = out["figures"]
    assert 0 < f["latency_ms_p50"] <= f["latency_ms_p95"]
    assert f["throughput_img_s"] > 0 and f["train_img_s"] > 0 and f["train_img_s_spread"] >= 0
    assert f["threads"] == 1.0 and f["params"] > 0
    assert out["method"]["weights"] == "trained" and out["method"]["repeats"] == 2
    assert out["method"]["timer"] == "time.perf_counter"  # CPU: the wall clock; CUDA events on a GPU
    assert out["hardware"]["cpu_cores"] >= 1 and out["hardware"]["torch"] == torch.__version__
    assert measure_alone(trial, str(tmp_path / "missing.pt"))["method"]["weights"] == "untrained"


def _speed_trial(paths, tmp_path, name, params=None):
    return make_trial(paths, str(tmp_path / name), detector={"name": name, "params": params or {}},
                      loss={"name": "softmax_ce"}, train={"batch_size": 2, "epochs": 2},
                      evaluation={"speed": {"latency_images": 2, "warmup": 1, "throughput_batch": 2,
                                            "throughput_batches": 1, "repeats": 1, "train_steps": 1}})


def test_the_training_step_timed_is_the_first_phase_as_the_trial_sets_it_up(tiny_paths, tmp_path):
    # Alternating training's step 1 trains the RPN on its own backbone: a step the speed phase times
    # must move rpn_backbone and leave the detector's backbone alone (before, the phase was not set
    # up: the RPN read the shared backbone and rpn_backbone got no gradient).
    import torch

    from detectors.build import build_detector
    from detectors.config import TrialConfig
    from detectors.data.coco import CocoDetection
    from detectors.evaluation.speed_phase import _train_speed

    trial = _speed_trial(tiny_paths, tmp_path, "faster_rcnn", {"training": "alternating"})
    model = build_detector(trial, 5, [1] * 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = CocoDetection(tiny_paths["train_images"], tiny_paths["train_annotations"])
    out = _train_speed(model, ds, TrialConfig.from_dict(trial), torch.device("cpu"), steps=1, repeats=1)
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"rpn_backbone", "rpn"} and out["train_img_s"] > 0


def test_alternating_training_leaves_its_step1_backbone_out_of_the_trained_detector(tiny_paths, tmp_path):
    import os

    import torch

    from detectors.build import build_detector
    from detectors.train.run import run_trial

    alternating = _speed_trial(tiny_paths, tmp_path, "faster_rcnn", {"training": "alternating",
                                                                     "alternating_epochs": [1, 1, 1, 1]})
    alternating["train"]["max_steps"] = 1
    alternating["eval"]["speed"]["isolated"] = False
    final = run_trial(alternating)
    saved = torch.load(os.path.join(alternating["trial_dir"], "final", "model.pt"), weights_only=True)
    assert not any(k.startswith("rpn_backbone.") for k in saved)
    joint = build_detector(_speed_trial(tiny_paths, tmp_path, "faster_rcnn"), 5, [1] * 5)
    # the trained alternating detector has exactly the joint scheme's parameters (one shared backbone)
    assert final["speed/params"] == sum(p.numel() for p in joint.parameters())
    # and the speed phase measures it from its saved weights
    out = measure_alone(alternating, os.path.join(alternating["trial_dir"], "final", "model.pt"))
    assert out["method"]["weights"] == "trained" and out["figures"]["params"] == final["speed/params"]


def test_rcnn_trains_on_its_cached_proposals_in_the_speed_phase(tiny_paths, tmp_path, monkeypatch):
    import torch

    from detectors.build import build_detector
    from detectors.config import TrialConfig
    from detectors.data.coco import CocoDetection
    from detectors.evaluation.speed_phase import _train_speed
    from detectors.models import proposals as proposals_module

    trial = _speed_trial(tiny_paths, tmp_path, "fast_rcnn")
    calls = []
    real = proposals_module.selective_search
    monkeypatch.setattr(proposals_module, "selective_search", lambda *a, **k: calls.append(1) or real(*a, **k))
    measure_alone(trial)
    first = len(calls)
    measure_alone(trial)
    # the first measurement computed and cached the 12 images' proposals (8 train + 4 val) before
    # anything was timed; the second found them cached: only the timed inference segments again
    assert first - len(calls[first:]) == 12
    # and a training step segments nothing once the proposals are attached
    train = CocoDetection(tiny_paths["train_images"], tiny_paths["train_annotations"])
    model = build_detector(trial, 5, [1] * 5)
    model.attach_datasets([train])
    before = len(calls)
    _train_speed(model, train, TrialConfig.from_dict(trial), torch.device("cpu"), steps=2, repeats=1)
    assert len(calls) == before
