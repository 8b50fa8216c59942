"""Multi-class (softmax) losses for heads with a background class, and their registry.

SSD (Liu et al., arXiv 1512.02325, eq. 2) and the Fast R-CNN head score each
box over ``K + 1`` classes with a softmax, class ``0`` being background: unlike
the sigmoid losses of ``detectors.losses.classification`` the classes compete.

Pure functions ``fn(logits, targets, ..., reduction="none")`` with the house
rules (``detectors.losses.classification.reduce_loss``): ``"none"`` gives one
loss per row ``[N]``, ``"sum"`` / ``"mean"`` a scalar, ``N == 0`` gives 0.0,
an unknown reduction raises ``ValueError``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from detectors.losses.classification import reduce_loss
from detectors.registry import Registry

__all__ = ["SOFTMAX_LOSSES", "softmax_ce_loss"]


def softmax_ce_loss(logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
    """Softmax cross entropy ``-log softmax(logits)[target]`` per row (SSD eq. 2, L_conf).

    Args:
        logits: float ``[N, C]`` raw scores; for detection heads ``C = K + 1`` with
            background at index 0.
        targets: int64 ``[N]`` class indices in ``0..C-1``, or float ``[N, C]``
            class probabilities (soft targets; each row sums to 1).
    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    if logits.shape[0] == 0:  # F.cross_entropy's own mean of nothing is NaN
        return reduce_loss(logits.sum(-1), reduction)
    if not targets.is_floating_point():
        targets = targets.long()
    loss = F.cross_entropy(logits, targets, reduction="none")
    return reduce_loss(loss, reduction)


SOFTMAX_LOSSES = Registry("softmax classification loss", injected=("reduction",))
SOFTMAX_LOSSES.register("softmax_ce")(softmax_ce_loss)
