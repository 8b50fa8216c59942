"""detectors.losses: known answers, torchvision agreement, reductions, empty input, gradients."""
import inspect
import math
import re

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detectors.losses import (
    BOX_LOSSES,
    CLS_LOSSES,
    balanced_ce_loss,
    ce_loss,
    focal_loss,
    inverse_frequency_alpha,
    l1_loss,
    smooth_l1_loss,
)

LOGIT_P09 = math.log(0.9 / 0.1)  # sigmoid(ln 9) = 9 / 10 = 0.9

CLS_FNS = [ce_loss, balanced_ce_loss, focal_loss]
BOX_FNS = [smooth_l1_loss, l1_loss]


def _random(n=64, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    targets = (torch.rand(n, c, generator=g) < 0.2).float()
    return logits, targets


# --- focal loss: known answers -------------------------------------------------


def test_focal_easy_positive_known_answer():
    # p = 0.9, target 1: p_t = 0.9, modulating (1 - 0.9)^2 = 0.01, CE = -ln 0.9 = 0.1053605
    # FL = 0.25 * 0.01 * 0.1053605 = 2.634013e-4 (100x below 0.25 * CE: easy example down-weighted)
    loss = focal_loss(torch.tensor([[LOGIT_P09]]), torch.tensor([[1.0]]), gamma=2.0, alpha=0.25)
    assert loss.shape == (1, 1)
    assert math.isclose(loss.item(), 0.25 * 0.01 * -math.log(0.9), rel_tol=1e-4)
    assert math.isclose(loss.item(), 2.634013e-4, rel_tol=1e-4)


def test_focal_hard_negative_known_answer():
    # p = 0.9, target 0: p_t = 1 - 0.9 = 0.1, modulating 0.9^2 = 0.81, CE = -ln 0.1 = 2.302585
    # FL = (1 - 0.25) * 0.81 * 2.302585 = 0.75 * 0.81 * 2.302585 = 1.398821
    loss = focal_loss(torch.tensor([[LOGIT_P09]]), torch.tensor([[0.0]]), gamma=2.0, alpha=0.25)
    assert math.isclose(loss.item(), 0.75 * 0.81 * -math.log(0.1), rel_tol=1e-4)
    assert math.isclose(loss.item(), 1.398821, rel_tol=1e-4)


def test_ce_known_answer():
    # logit 0 -> p = 0.5 -> CE = ln 2 = 0.693147 whatever the target
    loss = ce_loss(torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]))
    assert torch.allclose(loss, torch.full((2, 1), math.log(2)))


def test_balanced_ce_scalar_alpha_known_answer():
    # logit 0 -> CE = ln 2; alpha 0.75: positive 0.75 ln 2 = 0.519860, negative 0.25 ln 2 = 0.173287
    loss = balanced_ce_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), alpha=0.75)
    assert torch.allclose(loss, torch.tensor([[0.75 * math.log(2), 0.25 * math.log(2)]]))


def test_gamma0_equals_balanced_ce_and_ce():
    logits, targets = _random()
    for alpha in (0.25, 0.75, [0.5, 1.0, 2.0, 0.1, 3.0]):
        assert torch.allclose(
            focal_loss(logits, targets, gamma=0.0, alpha=alpha), balanced_ce_loss(logits, targets, alpha=alpha)
        )
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0, alpha=None), ce_loss(logits, targets))
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0, alpha=-1), ce_loss(logits, targets))


def test_focal_loss_smaller_than_ce_for_gamma_positive():
    # (1 - p_t)^gamma < 1 for every example with p_t > 0: focal never exceeds CE.
    logits, targets = _random()
    fl = focal_loss(logits, targets, gamma=2.0, alpha=None)
    assert (fl <= ce_loss(logits, targets)).all()
    assert (fl < ce_loss(logits, targets)).any()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_focal_matches_torchvision(gamma, alpha, reduction):
    logits, targets = _random(seed=int(gamma * 10))
    ours = focal_loss(logits, targets, gamma=gamma, alpha=alpha, reduction=reduction)
    theirs = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)


# --- per-class alpha -------------------------------------------------------------


def test_per_class_alpha_by_hand():
    # logit 0 -> CE = ln 2 everywhere. alpha = (0.5, 2.0):
    # row 0 is class 0: positive weighted 0.5, the class-1 negative weighted 1
    # row 1 is class 1: class-0 negative weighted 1, positive weighted 2.0
    # row 2 is background: both negatives weighted 1
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    loss = balanced_ce_loss(torch.zeros(3, 2), targets, alpha=[0.5, 2.0])
    ln2 = math.log(2)
    expected = torch.tensor([[0.5 * ln2, ln2], [ln2, 2.0 * ln2], [ln2, ln2]])
    assert torch.allclose(loss, expected)
    # same as a tensor, and in the focal loss (gamma 2, p_t = 0.5 -> factor 0.25)
    assert torch.allclose(balanced_ce_loss(torch.zeros(3, 2), targets, alpha=torch.tensor([0.5, 2.0])), expected)
    assert torch.allclose(focal_loss(torch.zeros(3, 2), targets, gamma=2.0, alpha=[0.5, 2.0]), 0.25 * expected)


def test_per_class_alpha_wrong_length_raises():
    with pytest.raises(ValueError):
        balanced_ce_loss(torch.zeros(3, 2), torch.zeros(3, 2), alpha=[0.5, 1.0, 2.0])


def test_scalar_alpha_above_one_raises():
    with pytest.raises(ValueError):
        focal_loss(torch.zeros(1, 1), torch.zeros(1, 1), alpha=1.5)


def test_inverse_frequency_alpha_by_hand():
    # counts (3, 1): f = (0.75, 0.25); 1/f = (4/3, 4), i.e. ratio 1 : 3
    # normalise 0.75 * w0 + 0.25 * w1 = 1 with w1 = 3 w0: 0.75 w0 + 0.75 w0 = 1.5 w0 = 1
    # -> w0 = 2/3, w1 = 2 (eps = 1e-6 moves these by ~1e-6)
    w = inverse_frequency_alpha([3, 1])
    assert len(w) == 2 and all(isinstance(x, float) for x in w)
    assert w == pytest.approx([2 / 3, 2.0], rel=1e-5)
    assert 0.75 * w[0] + 0.25 * w[1] == pytest.approx(1.0, rel=1e-9)


def test_inverse_frequency_alpha_uniform_and_bad_input():
    # equal counts -> all weights 1 (f_c = 1/C, w_c = C / C = 1)
    assert inverse_frequency_alpha([5, 5, 5, 5]) == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError):
        inverse_frequency_alpha([0, 0])
    with pytest.raises(ValueError):
        inverse_frequency_alpha([1, -1])


def test_inverse_frequency_on_a_set_without_objects_builds():
    # A generated set may hold no object; the study's "inverse_frequency" then has no
    # frequencies to invert. With no positive, per-class alpha weighs nothing: the loss
    # is that of any other alpha, e.g. all negatives at p = 0.9 cost -log(0.1) = 2.3026 each.
    from detectors.losses import build_loss

    fn = build_loss(CLS_LOSSES, "balanced_ce", {"alpha": "inverse_frequency"}, {"class_counts": [0, 0, 0]})
    assert fn.keywords["alpha"] == [1.0, 1.0, 1.0]
    logits, targets = torch.full((2, 3), LOGIT_P09), torch.zeros(2, 3)
    assert fn(logits, targets, reduction="sum").item() == pytest.approx(6 * math.log(10), rel=1e-5)


# --- gradients, reductions, empty input --------------------------------------------


@pytest.mark.parametrize("fn", CLS_FNS)
def test_finite_gradients_at_saturated_logits(fn):
    # p = sigmoid(30) = 1 - 9.4e-14: log(p) / log(1 - p) from probabilities would hit log(0)
    logits = torch.tensor([[30.0, -30.0], [-30.0, 30.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # row 0 right, row 1 confidently wrong
    loss = fn(logits, targets, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    # the confidently wrong row (CE ~ 30 each) dominates the loss and has non-zero gradients
    assert loss.item() > 1.0
    assert (logits.grad[1].abs() > 0).all()


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_focal_finite_gradients_saturated_for_every_gamma(gamma):
    # d/dp_t (1 - p_t)^0.5 = -0.5 / sqrt(1 - p_t) is infinite at p_t = 1, which float32
    # reaches already at sigmoid(17); torchvision's formula gives NaN gradients here.
    logits = torch.tensor([[30.0, -30.0], [200.0, -200.0], [-200.0, 200.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    loss = focal_loss(logits, targets, gamma=gamma, alpha=0.25, reduction="sum")
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # confidently wrong row: p_t = sigmoid(-200) ~ 0, factor ~ 1, CE = 200 each;
    # 0.25 * 200 + 0.75 * 200 = 200, and gradients -alpha = -0.25 and +(1 - alpha) = 0.75
    assert loss.item() == pytest.approx(200.0, rel=1e-4)
    assert torch.allclose(logits.grad[2], torch.tensor([-0.25, 0.75]), atol=1e-4)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradients_match_torchvision(gamma):
    logits, targets = _random(seed=7)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    focal_loss(a, targets, gamma=gamma, alpha=0.25, reduction="sum").backward()
    sigmoid_focal_loss(b, targets, alpha=0.25, gamma=gamma, reduction="sum").backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", CLS_FNS)
def test_cls_reductions(fn):
    logits, targets = _random()
    none = fn(logits, targets, reduction="none")
    assert none.shape == logits.shape
    assert torch.allclose(fn(logits, targets, reduction="sum"), none.sum())
    assert torch.allclose(fn(logits, targets, reduction="mean"), none.mean())
    assert fn(logits, targets, reduction="sum").dim() == 0


@pytest.mark.parametrize("fn", BOX_FNS)
def test_box_reductions(fn):
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    none = fn(pred, target, reduction="none")
    assert none.shape == (10, 4)
    assert torch.allclose(fn(pred, target, reduction="sum"), none.sum())
    assert torch.allclose(fn(pred, target, reduction="mean"), none.mean())


@pytest.mark.parametrize("fn", CLS_FNS + BOX_FNS)
def test_empty_input_every_reduction(fn):
    a = torch.zeros(0, 4, requires_grad=True)
    b = torch.zeros(0, 4)
    assert fn(a, b, reduction="none").shape == (0, 4)
    for reduction in ("sum", "mean"):
        out = fn(a, b, reduction=reduction)
        assert out.dim() == 0 and out.item() == 0.0  # not NaN for mean
        out.backward()  # still part of the graph: a batch with no anchors can be summed in


@pytest.mark.parametrize("fn", CLS_FNS + BOX_FNS)
def test_unknown_reduction_raises(fn):
    with pytest.raises(ValueError):
        fn(torch.zeros(2, 4), torch.zeros(2, 4), reduction="avg")
    with pytest.raises(ValueError):  # also on empty input
        fn(torch.zeros(0, 4), torch.zeros(0, 4), reduction="avg")


# --- box losses ------------------------------------------------------------------------


def test_smooth_l1_known_values_both_sides_of_beta():
    beta = 1.0 / 9  # 0.1111
    pred = torch.tensor([0.05, 1.0, -2.0, 0.0])
    target = torch.zeros(4)
    loss = smooth_l1_loss(pred, target, beta=beta)
    # |x| = 0.05 < beta: 0.5 * 0.05^2 / (1/9) = 0.5 * 0.0025 * 9 = 0.01125
    # |x| = 1 >= beta: 1 - 0.5 / 9 = 0.944444
    # |x| = 2 >= beta: 2 - 0.5 / 9 = 1.944444
    # |x| = 0: 0
    expected = torch.tensor([0.01125, 1 - 0.5 / 9, 2 - 0.5 / 9, 0.0])
    assert torch.allclose(loss, expected, atol=1e-7)


def test_smooth_l1_continuous_at_beta():
    # at |x| = beta both branches give beta / 2: 0.5 * beta^2 / beta = beta - 0.5 * beta
    beta = 0.5
    eps = 1e-4
    lo = smooth_l1_loss(torch.tensor([beta - eps]), torch.zeros(1), beta=beta)
    hi = smooth_l1_loss(torch.tensor([beta + eps]), torch.zeros(1), beta=beta)
    assert math.isclose(lo.item(), 0.25, abs_tol=2e-4) and math.isclose(hi.item(), 0.25, abs_tol=2e-4)


def test_smooth_l1_beta0_is_l1():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.allclose(smooth_l1_loss(pred, target, beta=0.0), l1_loss(pred, target))
    # |0.3 - (-0.2)| = 0.5
    assert l1_loss(torch.tensor([0.3]), torch.tensor([-0.2])).item() == pytest.approx(0.5)


# --- registries ----------------------------------------------------------------------------


def test_every_registered_loss_runs_with_its_declared_defaults():
    # Whatever is registered: the declared study parameters are the function's keyword
    # parameters (reduction is filled by the models), each default fits its own declared
    # type and range, and the function runs on them for every reduction.
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0], [-3.0, 4.0]])
    onehot = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    for registry, target in ((CLS_LOSSES, onehot), (BOX_LOSSES, torch.zeros(3, 2))):
        for name in registry:
            entry = registry.entry(name)
            sig = inspect.signature(entry.fn)
            keywords = {k for k, p in sig.parameters.items() if p.default is not p.empty} - {"reduction"}
            assert set(entry.params) == keywords, name
            defaults = {k: p.check(p.default) for k, p in entry.params.items()}
            assert defaults == {k: p.default for k, p in entry.params.items()}, name
            assert entry.fn(logits, target, **defaults, reduction="none").shape == logits.shape
            for reduction in ("sum", "mean"):
                assert torch.isfinite(entry.fn(logits, target, **defaults, reduction=reduction)), (name, reduction)


def test_declared_ranges_reject_what_the_functions_reject():
    # paper defaults: focal gamma 2, alpha 0.25 (Table 1b); balanced CE alpha 0.75 (Table 1a)
    assert CLS_LOSSES.parameters("focal")["gamma"].default == 2.0
    assert CLS_LOSSES.parameters("focal")["alpha"].default == 0.25
    assert CLS_LOSSES.parameters("balanced_ce")["alpha"].default == 0.75
    focal = CLS_LOSSES.entry("focal")
    assert focal.check_params({"gamma": 1, "alpha": "inverse_frequency"}) == {"gamma": 1.0,
                                                                              "alpha": "inverse_frequency"}
    assert focal.check_params({"alpha": [1, 0.5]}) == {"alpha": [1.0, 0.5]}
    for bad, message in (({"gamma": -1}, "must be in [0, 20], got -1"), ({"alpha": 1.5}, "must be in [0, 1], got 1.5"),
                         ({"alpha": "rare"}, "expected a number in [0, 1], a list of numbers, 'inverse_frequency' "
                                             "or null, got 'rare'")):
        with pytest.raises(ValueError, match=re.escape(message)):
            focal.check_params(bad)
        with pytest.raises((ValueError, TypeError)):  # the function itself agrees
            focal_loss(torch.zeros(1, 2), torch.zeros(1, 2), **{"gamma": 2.0, "alpha": 0.25, **bad})
    with pytest.raises(ValueError, match=re.escape("must be in [0, 100], got -0.5")):
        BOX_LOSSES.entry("smooth_l1").check_params({"beta": -0.5})
