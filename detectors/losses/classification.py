"""Classification losses of dense detectors, sigmoid (per-class binary) form.

Focal loss paper (Lin et al., arXiv 1708.02002): plain cross entropy (sec. 3),
alpha-balanced CE (sec. 3.1) and the focal loss (sec. 3.2). Each class is its
own binary problem, so there is no background logit: a background anchor has an
all-zero target row.

Every loss is a pure function ``fn(logits, targets, ..., reduction="none")``:

* ``logits``: float ``[N, C]`` raw scores (any shape works, ``[N, C]`` is the
  contract; per-class alpha needs the class dimension last).
* ``targets``: float ``[N, C]`` in ``{0, 1}``, one-hot per row.
* ``reduction``: ``"none"`` -> elementwise ``[N, C]``; ``"sum"`` / ``"mean"`` -> scalar.
  ``N == 0`` gives ``0.0`` for both (torchvision's mean would be NaN; an image
  without anchors must not poison a batch). Normalising by the number of
  positive anchors (paper sec. 4) is the caller's job: use ``"sum"``.

``F.binary_cross_entropy_with_logits`` gives ``-log(p_t)`` from the logits
directly, so values and gradients stay finite for logits of +-30 and beyond,
where ``log(sigmoid(x))`` would hit ``log(0)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ce_loss",
    "balanced_ce_loss",
    "focal_loss",
    "inverse_frequency_alpha",
    "reduce_loss",
]

# A scalar alpha, a per-class sequence / 1-D tensor of length C, or None.
Alpha = Union[float, Sequence[float], Tensor, None]

_REDUCTIONS = ("none", "mean", "sum")


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to an elementwise loss; the empty mean is ``0.0``, not NaN.

    Args:
        loss: float tensor of elementwise losses, any shape (may be empty).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Raises:
        ValueError: on any other ``reduction``, even for empty input, so a typo
            is caught on the first batch and not only on a non-empty one.
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # sum() of an empty tensor is 0 and still carries the graph.
        return loss.mean() if loss.numel() > 0 else loss.sum()
    raise ValueError(f"invalid reduction '{reduction}'; expected one of {_REDUCTIONS}")


def ce_loss(logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
    """Sigmoid binary cross entropy ``CE(p_t) = -log(p_t)`` (paper sec. 3, eq. 2).

    The gamma = 0, no-alpha case of :func:`focal_loss`. Without the prior
    initialisation of the last bias (sec. 3.3) it diverges in RetinaNet.

    Args:
        logits: float ``[N, C]``; targets: float ``[N, C]`` in ``{0, 1}``.
    Returns:
        ``[N, C]`` for ``reduction="none"``, else a scalar.
    """
    targets = targets.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return reduce_loss(loss, reduction)


def balanced_ce_loss(
    logits: Tensor, targets: Tensor, alpha: Alpha = 0.75, reduction: str = "none"
) -> Tensor:
    """Alpha-balanced cross entropy ``-alpha_t log(p_t)`` (paper sec. 3.1, eq. 3).

    ``alpha`` is either

    * a scalar in ``[0, 1]``: ``alpha_t = alpha`` where ``targets == 1`` and
      ``1 - alpha`` where ``targets == 0`` (the paper's form; its Table 1a
      finds 0.75 best for CE, hence the default), or
    * a sequence / 1-D tensor of ``C`` per-class foreground weights
      ``alpha_c`` (e.g. :func:`inverse_frequency_alpha`): positives of class
      ``c`` are weighted ``alpha_c`` and every negative is weighted 1.
    * ``None`` or a negative scalar: no weighting (equals :func:`ce_loss`).

    Args:
        logits: float ``[N, C]``; targets: float ``[N, C]`` in ``{0, 1}``.
    Returns:
        ``[N, C]`` for ``reduction="none"``, else a scalar.
    """
    return focal_loss(logits, targets, gamma=0.0, alpha=alpha, reduction=reduction)


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: Alpha = 0.25,
    reduction: str = "none",
) -> Tensor:
    """Focal loss ``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)`` (paper sec. 3.2, eq. 5).

    ``p_t = p`` for a positive and ``1 - p`` for a negative, ``p = sigmoid(logit)``.
    The modulating factor ``(1 - p_t)^gamma`` down-weights easy examples (the
    vast majority of the ~100k background anchors). ``targets`` must be hard
    (0 or 1): the factor is computed from the signed logit. Paper defaults: gamma 2,
    alpha 0.25 (Table 1b). Matches ``torchvision.ops.sigmoid_focal_loss`` for a
    scalar alpha, except that the mean of an empty input is 0.0 and gradients
    stay finite for saturated logits when ``0 < gamma < 1`` (torchvision: NaN).

    Args:
        logits: float ``[N, C]``; targets: float ``[N, C]`` in ``{0, 1}``.
        gamma: focusing parameter, ``>= 0``; 0 gives (balanced) CE.
        alpha: as in :func:`balanced_ce_loss`; ``None`` or negative (torchvision
            uses -1) means no alpha weighting.
    Returns:
        ``[N, C]`` for ``reduction="none"``, else a scalar.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    targets = targets.to(logits.dtype)
    if gamma != 0:
        # With s = logit for a negative and -logit for a positive, 1 - p_t = sigmoid(s), so
        # (1 - p_t)^gamma = exp(gamma * logsigmoid(s)) and -log(p_t) = softplus(s) = s - logsigmoid(s):
        # one logsigmoid gives both (the profile of a training step showed the loss's two
        # logsigmoid passes, BCE's and the factor's, as its largest cost). The direct form
        # (torchvision's) has an infinite derivative at p_t = 1 for gamma < 1 (paper Table 1b
        # tries gamma 0.5), so a single saturated, correct logit (sigmoid(17) == 1.0 in float32)
        # makes the whole gradient NaN; this one stays finite. Exact for targets in {0, 1}; for
        # an easy example (s < 0) s - logsigmoid(s) loses relative precision, but the term's
        # absolute error, about |s| exp(gamma * s) float32 ulps, stays under 3e-8 / gamma.
        signed = logits * (1 - 2 * targets)
        log_q = F.logsigmoid(signed)
        loss = (signed - log_q) * torch.exp(gamma * log_q)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    weight = _alpha_weight(alpha, targets)
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction)


def inverse_frequency_alpha(class_counts: Sequence[float], eps: float = 1e-6) -> List[float]:
    """Per-class foreground weights ``w_c ∝ 1 / (f_c + eps)`` from class frequencies.

    ``f_c = count_c / sum(counts)`` over the training set's ground-truth boxes.
    The weights are normalised so that ``sum_c f_c * w_c == 1``: averaged over
    the positives in the data the weight is still 1, so the total positive loss
    keeps its scale and only its split between classes changes (rare classes
    count more, frequent ones less). ``eps`` keeps a class with no boxes finite;
    its weight is then about ``1 / eps`` times the normaliser, which is harmless
    since such a class never has a positive.

    Example: counts (3, 1) -> f = (0.75, 0.25) -> w ∝ (4/3, 4); with
    ``0.75 * w0 + 0.25 * w1 == 1`` this is w = (2/3, 2).

    Returns:
        ``C`` floats, usable as ``alpha`` of :func:`balanced_ce_loss` /
        :func:`focal_loss` and as a JSON-able study parameter.
    """
    counts = [float(c) for c in class_counts]
    if not counts or any(c < 0 for c in counts) or not math.isfinite(sum(counts)):
        raise ValueError(f"class_counts must be non-negative finite numbers, got {class_counts!r}")
    total = sum(counts)
    if total <= 0:
        raise ValueError("class_counts sum to 0: no class frequencies to invert")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    freqs = [c / total for c in counts]
    raw = [1.0 / (f + eps) for f in freqs]
    norm = sum(f * w for f, w in zip(freqs, raw))
    return [w / norm for w in raw]


def _alpha_weight(alpha: Alpha, targets: Tensor) -> Optional[Tensor]:
    """Elementwise weight for ``targets`` ``[N, C]``, or ``None`` for no weighting."""
    if alpha is None:
        return None
    if isinstance(alpha, Tensor) and alpha.dim() == 0:
        alpha = float(alpha)
    if isinstance(alpha, (int, float)):
        if alpha < 0:  # torchvision's alpha=-1 convention for "off"
            return None
        if alpha > 1:
            raise ValueError(f"scalar alpha must be in [0, 1] (or negative / None for off), got {alpha}")
        return alpha * targets + (1 - alpha) * (1 - targets)

    per_class = torch.as_tensor(alpha, dtype=targets.dtype, device=targets.device)
    num_classes = targets.shape[-1] if targets.dim() > 0 else 0
    if per_class.dim() != 1 or per_class.numel() != num_classes:
        raise ValueError(
            f"per-class alpha needs one weight per class ({num_classes}), got shape {tuple(per_class.shape)}"
        )
    if bool((per_class < 0).any()):
        raise ValueError("per-class alpha weights must be >= 0")
    # Positives of class c weigh alpha_c; negatives keep weight 1, so the
    # re-weighting only redistributes the (rare) foreground terms.
    return targets * per_class + (1 - targets)
