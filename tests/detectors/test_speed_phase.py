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
