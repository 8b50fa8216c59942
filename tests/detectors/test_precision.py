"""train.precision and channels_last on CPU: bf16 autocast runs and trains, fp16 scales its gradients,
fp32 is untouched; the loss-scaler state survives a checkpoint."""
import pytest
import torch

from detectors.train.precision import autocast, grad_scaler, prepare_memory_format
from detectors.train.run import run_trial
from detectors.train.trial import make_trial


def test_autocast_runs_matmuls_in_the_chosen_type_and_fp32_not_at_all():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast("cpu", "fp8")


def test_only_fp16_scales_the_loss():
    loss = torch.tensor(2.0)
    assert not grad_scaler("cpu", "bf16").is_enabled() and grad_scaler("cpu", "bf16").scale(loss) is loss
    fp16 = grad_scaler("cpu", "fp16")
    assert fp16.is_enabled() and float(fp16.scale(loss)) == 2.0 * 65536.0  # GradScaler's initial scale 2^16


def test_channels_last_lays_out_conv_weights_nhwc():
    conv = torch.nn.Conv2d(3, 8, 3)
    assert prepare_memory_format(conv, False).weight.is_contiguous()
    assert prepare_memory_format(conv, True).weight.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    from detectors.data.synthetic import generate

    return generate({"num_train": 8, "num_val": 4}, str(tmp_path_factory.mktemp("data")))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_low_precision_trial_trains_on_cpu(tiny_paths, tmp_path, precision):
    trial = make_trial(tiny_paths, str(tmp_path / "t"),
                       train={"epochs": 2, "batch_size": 4, "precision": precision,  # 2 epochs of 2 steps
                              "channels_last": True},
                       evaluation={"speed": {"enabled": False}})
    reports = []
    final = run_trial(trial, lambda m, c: reports.append((m, c)))
    epochs = [m for m, _ in reports if "train/loss" in m]
    assert len(epochs) == 2 and all(torch.isfinite(torch.tensor(m["train/loss"])) for m in epochs)
    assert 0.0 <= final["AP"] <= 1.0
    state = torch.load(f"{reports[0][1]}/state.pt", weights_only=True)
    # fp16's loss scale is part of the checkpoint (a resumed run scales as the uninterrupted one); bf16 has none
    assert ("scaler" in state["extra"]) == (precision == "fp16")
