"""GFL-family losses (detectors.losses.gfl): known answers, the paper's properties, reductions, gradients."""
import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detectors.losses import (
    CLS_LOSSES,
    distribution_focal_loss,
    focal_loss,
    gaussian_nll_loss,
    giou_loss,
    integral,
    quality_focal_loss,
)


# ---------------------------------------------------------------- QFL
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0, 4.0])
def test_qfl_equals_focal_loss_without_alpha_at_hard_targets(beta):
    # y in {0, 1}: |y - sigma| = 1 - p_t, so QFL is FL with gamma = beta and no alpha (GFL sec. 3.1).
    torch.manual_seed(0)
    logits = torch.randn(50, 4) * 4
    targets = (torch.rand(50, 4) > 0.7).float()
    qfl = quality_focal_loss(logits, targets, beta=beta)
    assert torch.allclose(qfl, focal_loss(logits, targets, gamma=beta, alpha=None), atol=1e-6)
    assert torch.allclose(qfl, sigmoid_focal_loss(logits, targets, alpha=-1, gamma=beta), atol=1e-6)


def test_qfl_known_answer():
    # sigma(0) = 0.5, y = 0.8: BCE = -(0.8 log 0.5 + 0.2 log 0.5) = log 2 = 0.693147;
    # factor |0.8 - 0.5|^2 = 0.09 -> 0.0623832.  beta = 1: 0.3 * log 2 = 0.207944.
    logits, y = torch.tensor([[0.0]]), torch.tensor([[0.8]])
    assert quality_focal_loss(logits, y).item() == pytest.approx(0.09 * math.log(2), rel=1e-5)
    assert quality_focal_loss(logits, y, beta=1.0).item() == pytest.approx(0.3 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_qfl_is_zero_with_zero_gradient_where_sigma_equals_y(beta):
    y = torch.tensor([[0.0, 0.25, 0.5, 0.9]])
    logits = torch.tensor([[-30.0, math.log(0.25 / 0.75), 0.0, math.log(0.9 / 0.1)]], requires_grad=True)
    loss = quality_focal_loss(logits, y, beta=beta)
    assert loss.abs().max().item() < 1e-6
    loss.sum().backward()
    # The minimum: no push in either direction, and no NaN from |d|^beta at d = 0 for beta < 1.
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max().item() < 1e-4


def test_qfl_soft_target_minimum_and_gradient_direction():
    # For a fixed y = 0.6, the loss over s = sigmoid(logit) is smallest at s = y and grows both ways.
    y = torch.full((1, 201), 0.6)
    logits = torch.linspace(-5, 5, 201)[None]
    loss = quality_focal_loss(logits, y)
    best = torch.sigmoid(logits[0, loss[0].argmin()]).item()
    assert best == pytest.approx(0.6, abs=0.02)
    x = torch.tensor([[0.0, 2.0]], requires_grad=True)  # s = 0.5 < 0.6 and s = 0.88 > 0.6
    quality_focal_loss(x, torch.tensor([[0.6, 0.6]])).sum().backward()
    assert x.grad[0, 0] < 0 < x.grad[0, 1]  # gradient descent moves both toward 0.6


def test_qfl_saturated_logits_give_finite_values_and_gradients():
    logits = torch.tensor([[100.0, -100.0, 40.0, -40.0]], requires_grad=True)
    y = torch.tensor([[0.3, 0.7, 1.0, 0.0]])
    for beta in (0.5, 2.0):
        loss = quality_focal_loss(logits, y, beta=beta, reduction="sum")
        assert torch.isfinite(loss)
        logits.grad = None
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_qfl_reductions_empty_and_errors():
    logits, y = torch.randn(3, 2), torch.rand(3, 2)
    none = quality_focal_loss(logits, y)
    assert none.shape == (3, 2)
    assert quality_focal_loss(logits, y, reduction="sum").item() == pytest.approx(none.sum().item(), rel=1e-6)
    assert quality_focal_loss(logits, y, reduction="mean").item() == pytest.approx(none.mean().item(), rel=1e-6)
    empty = torch.zeros(0, 2, requires_grad=True)
    for red in ("sum", "mean"):
        out = quality_focal_loss(empty, torch.zeros(0, 2), reduction=red)
        assert out.item() == 0.0
        out.backward()
    with pytest.raises(ValueError, match="reduction"):
        quality_focal_loss(logits, y, reduction="avg")
    with pytest.raises(ValueError, match="beta"):
        quality_focal_loss(logits, y, beta=-1.0)


def test_qfl_is_registered_with_beta():
    assert CLS_LOSSES.get("qfl") is quality_focal_loss
    assert set(CLS_LOSSES.parameters("qfl")) - {"reduction"} == {"beta"}
    assert CLS_LOSSES.parameters("qfl")["beta"].default == 2.0


# ---------------------------------------------------------------- DFL
def test_dfl_known_answers():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))  # softmax gives back (0.1, 0.2, 0.3, 0.4); n = 3
    # y = 1.25: bins 1 and 2 with weights (2 - 1.25, 1.25 - 1) = (0.75, 0.25):
    # -(0.75 log 0.2 + 0.25 log 0.3) = 0.75 * 1.609438 + 0.25 * 1.203973 = 1.508072
    assert distribution_focal_loss(logits, torch.tensor([1.25])).item() == pytest.approx(1.508072, rel=1e-5)
    # An integer target is plain cross entropy on its bin: y = 2 -> -log 0.3 = 1.203973.
    assert distribution_focal_loss(logits, torch.tensor([2.0])).item() == pytest.approx(1.203973, rel=1e-5)
    # y = n = 3 (the last bin): weights (0, 1) on bins (2, 3) -> -log 0.4 = 0.916291.
    assert distribution_focal_loss(logits, torch.tensor([3.0])).item() == pytest.approx(0.916291, rel=1e-5)
    # Uniform over 5 bins: every bin has -log(1/5) = log 5 and the weights sum to 1.
    out = distribution_focal_loss(torch.zeros(2, 5), torch.tensor([0.3, 4.0]))
    assert torch.allclose(out, torch.full((2,), math.log(5)))


def test_dfl_is_smallest_at_the_neighbour_weights():
    # y = 2.7 over bins 0..4: the minimum puts (3 - 2.7, 2.7 - 2) = (0.3, 0.7) on bins 2 and 3,
    # where DFL equals that distribution's entropy -(0.3 log 0.3 + 0.7 log 0.7) = 0.610864.
    y = torch.tensor([2.7])
    best = torch.log(torch.tensor([[1e-12, 1e-12, 0.3, 0.7, 1e-12]]))
    at_best = distribution_focal_loss(best, y).item()
    assert at_best == pytest.approx(0.610864, abs=1e-4)
    torch.manual_seed(0)
    for _ in range(20):
        assert distribution_focal_loss(best + 0.3 * torch.randn(1, 5), y).item() > at_best
    # Gradient descent from uniform logits finds those weights, and the integral is then y.
    logits = torch.zeros(1, 5, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        distribution_focal_loss(logits, y, reduction="sum").backward()
        opt.step()
    probs = torch.softmax(logits.detach(), -1)[0]
    assert probs[2].item() == pytest.approx(0.3, abs=0.005) and probs[3].item() == pytest.approx(0.7, abs=0.005)
    assert integral(logits.detach()).item() == pytest.approx(2.7, abs=0.01)


def test_dfl_reductions_empty_and_errors():
    logits = torch.randn(4, 17, requires_grad=True)
    y = torch.tensor([0.0, 3.5, 15.99, 16.0])
    none = distribution_focal_loss(logits, y)
    assert none.shape == (4,)
    assert distribution_focal_loss(logits, y, reduction="sum").item() == pytest.approx(none.sum().item(), rel=1e-6)
    none.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert distribution_focal_loss(torch.zeros(0, 17), torch.zeros(0), reduction="mean").item() == 0.0
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        distribution_focal_loss(logits, torch.tensor([0.0, 1.0, 2.0, 16.5]))
    with pytest.raises(ValueError, match="reduction"):
        distribution_focal_loss(logits, y, reduction="max")


# ---------------------------------------------------------------- integral
def test_integral_of_a_one_hot_distribution_is_its_bin():
    for i in range(5):
        one_hot = torch.full((5,), float("-inf"))
        one_hot[i] = 0.0  # log of a one-hot distribution
        assert integral(one_hot).item() == float(i)
        assert integral(one_hot, delta=0.5).item() == 0.5 * i
    # Uniform over bins 0..16: the mean, 8. Batch dimensions are kept.
    assert torch.equal(integral(torch.zeros(2, 3, 17)), torch.full((2, 3), 8.0))


# ---------------------------------------------------------------- GIoU
def test_giou_known_answers():
    pred = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[0.0, 0.0, 50.0, 50.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    # Quarter box inside another: IoU 1/4, enclosing box = union -> loss 1 - 1/4 = 0.75 (torchvision's test).
    # Disjoint unit boxes 1 apart: IoU 0, enclosing area 3, union 2 -> GIoU -1/3, loss 4/3.
    # Identical: 0.
    out = giou_loss(pred, target)
    assert out.tolist() == pytest.approx([0.75, 4 / 3, 0.0], abs=1e-5)
    assert giou_loss(pred, target, reduction="mean").item() == pytest.approx((0.75 + 4 / 3) / 3, abs=1e-5)
    empty = torch.zeros(0, 4, requires_grad=True)
    for red in ("none", "sum", "mean"):
        assert giou_loss(empty, torch.zeros(0, 4), reduction=red).sum().item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        giou_loss(pred, target, reduction="total")


# ---------------------------------------------------------------- Gaussian NLL
def test_gaussian_nll_known_answers_and_variance_minimum():
    mean, y = torch.tensor([1.0]), torch.tensor([3.0])
    # log var 0: 0.5 * 1 * (3 - 1)^2 + 0 = 2.0
    assert gaussian_nll_loss(mean, torch.tensor([0.0]), y).item() == pytest.approx(2.0)
    # var 4: 0.5 * (1/4) * 4 + 0.5 log 4 = 0.5 + 0.693147 = 1.193147
    assert gaussian_nll_loss(mean, torch.tensor([math.log(4.0)]), y).item() == pytest.approx(1.193147, rel=1e-5)
    # d/da [0.5 e^-a r^2 + 0.5 a] = 0 at e^a = r^2: the learned variance is the squared error.
    a = torch.tensor([math.log(4.0)], requires_grad=True)
    gaussian_nll_loss(mean, a, y, reduction="sum").backward()
    assert abs(a.grad.item()) < 1e-6
    assert gaussian_nll_loss(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4), reduction="mean").item() == 0.0
