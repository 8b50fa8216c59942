"""Losses of the Generalized Focal Loss family and its box representations.

Generalized Focal Loss (Li et al., arXiv 2006.04388): Quality Focal Loss
(sec. 3, eq. 5) trains a joint classification-IoU score against soft targets;
Distribution Focal Loss (eq. 6) trains a general distribution over ``n + 1``
bins of a box side; the integral (eq. 4) turns that distribution into a
distance. Beside them the box losses the paper's Table 2a compares with:
GIoU (Rezatofighi et al., arXiv 1902.09630; torchvision's implementation) on
decoded boxes, and the Gaussian negative log-likelihood of "Bounding box
regression with uncertainty" (He et al., arXiv 1809.08545, eq. 9).

Pure functions ``fn(pred, target, ..., reduction="none")`` with the rules of
``detectors.losses.classification``: ``"none"`` keeps the elementwise shape,
``"sum"`` / ``"mean"`` give a scalar, empty input gives 0.0 for both, an
unknown reduction raises ValueError. Normalising by the number of positives
is the caller's job (use ``"sum"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from detectors.losses.classification import reduce_loss

__all__ = [
    "quality_focal_loss",
    "distribution_focal_loss",
    "integral",
    "giou_loss",
    "gaussian_nll_loss",
]


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0, reduction: str = "none") -> Tensor:
    """Quality Focal Loss ``QFL(s) = -|y - s|^beta ((1 - y) log(1 - s) + y log(s))`` (GFL eq. 5).

    ``s = sigmoid(logit)``; ``y`` is a soft target in ``[0, 1]``: the IoU of a
    positive's decoded box with its ground truth on the gt's class, 0 on every
    other class and for every negative. The cross entropy is the full binary
    one (not only its positive term), so the minimum is at ``s = y``, where the
    loss is exactly 0. With ``y`` in ``{0, 1}`` it is the focal loss without
    alpha and ``gamma = beta``, since then ``|y - s| = 1 - p_t``. Paper default
    beta 2 (Table 1c: 0 -> 37.6, 1 -> 39.0, 2 -> 39.9, 4 -> 38.2 AP).

    Args:
        logits: float ``[N, C]`` raw scores.
        targets: float ``[N, C]`` soft scores in ``[0, 1]``.
        beta: modulating exponent, ``>= 0``; 0 gives plain binary CE on soft targets.
    Returns:
        ``[N, C]`` for ``reduction="none"``, else a scalar.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    targets = targets.to(logits.dtype)
    # BCE from the logits stays finite for saturated scores, unlike log(sigmoid(x)).
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if beta != 0:
        dist = (targets - torch.sigmoid(logits)).abs()
        # |d|^beta has an infinite derivative at d = 0 for beta < 1, and
        # pow's backward gives 0 * inf = NaN even through a masked branch, so
        # the base is swapped for 1 where d == 0; the factor there is exactly 0.
        nonzero = dist > 0
        safe = torch.where(nonzero, dist, torch.ones_like(dist))
        loss = loss * torch.where(nonzero, safe.pow(beta), torch.zeros_like(dist))
    return reduce_loss(loss, reduction)


def distribution_focal_loss(logits: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
    """Distribution Focal Loss over ``n + 1`` bins (GFL eq. 6).

    ``DFL(S_i, S_{i+1}) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})``,
    ``S = softmax(logits)``, ``y_i <= y <= y_{i+1}`` the two bins around the
    target. It is the cross entropy against the two-bin distribution
    ``(y_{i+1} - y, y - y_i)``, whose integral is exactly ``y``; it is smallest
    (equal to that distribution's entropy) when ``S`` puts those weights on
    those bins and nothing elsewhere.

    Args:
        logits: float ``[N, n + 1]`` per-bin scores of one box side each.
        target: float ``[N]`` in bin units, ``0 <= y <= n`` (the caller clamps;
            ``y == n`` is allowed and puts all weight on the last bin).
    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    n = logits.shape[-1] - 1
    if n < 1:
        raise ValueError(f"need at least 2 bins, got {logits.shape[-1]}")
    target = target.to(logits.dtype)
    if target.numel() and (bool(target.min() < 0) or bool(target.max() > n)):
        raise ValueError(f"DFL targets must lie in [0, {n}] (bin units), got "
                         f"[{float(target.min()):.4g}, {float(target.max()):.4g}]")
    # Left bin capped at n - 1 so y == n is (n - 1, n) with weights (0, 1).
    left = target.floor().long().clamp(max=n - 1)
    w_left = (left + 1).to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    loss = (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, left + 1, reduction="none") * w_right)
    return reduce_loss(loss, reduction)


def integral(logits: Tensor, delta: float = 1.0) -> Tensor:
    """Expectation of the general distribution: ``y_hat = sum_i P(y_i) y_i`` (GFL eq. 4).

    Bins are ``y_i = i * delta``, ``i = 0..n``, so the result is in the units
    of ``delta`` times bins (``delta = 1``: bin units, the paper's stride units).

    Args:
        logits: float ``[..., n + 1]``; softmax over the last dimension gives ``P``.
        delta: bin spacing.
    Returns:
        float ``[...]``.
    """
    bins = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device) * delta
    return torch.softmax(logits, dim=-1) @ bins


def giou_loss(pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
    """``1 - GIoU`` of matched box pairs (Rezatofighi et al. eq. / torchvision's loss).

    A wrapper so the reductions and the empty case follow the house rules.

    Args:
        pred, target: float ``[N, 4]`` xyxy, absolute pixels, paired row by row.
    Returns:
        ``[N]`` in ``[0, 2)`` for ``reduction="none"``, else a scalar.
    """
    loss = generalized_box_iou_loss(pred, target.to(pred.dtype), reduction="none")
    return reduce_loss(loss, reduction)


def gaussian_nll_loss(mean: Tensor, log_var: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
    """Gaussian negative log-likelihood ``exp(-a) (y - mu)^2 / 2 + a / 2``, ``a = log sigma^2``.

    He et al. ("Bounding box regression with uncertainty", eq. 9; their KL loss
    without the smooth-L1 branch for ``|y - mu| > 1``), without the constant
    ``log(2 pi) / 2``. Predicting ``a`` instead of ``sigma`` keeps the variance
    positive; the caller bounds ``a`` (``exp(-a)`` overflows below about -88).

    Args:
        mean, log_var, target: float tensors of one shape, e.g. ``[N, 4]`` box sides.
    Returns:
        elementwise for ``reduction="none"``, else a scalar.
    """
    target = target.to(mean.dtype)
    loss = 0.5 * torch.exp(-log_var) * (target - mean) ** 2 + 0.5 * log_var
    return reduce_loss(loss, reduction)
