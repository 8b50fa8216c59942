"""Multi-class (softmax) losses for region classifiers with a background class.

The two-stage detectors' RoI classifiers (R-CNN's fine-tuning head, Fast and
Faster R-CNN's box head) score each region over ``K + 1`` classes, background
included (Fast R-CNN sec. 2.3: "a discrete probability distribution (per RoI),
p = (p_0, ..., p_K), over K + 1 categories"). Unlike the sigmoid losses in
``classification.py`` the target is one class index per row.

Pure functions ``fn(logits, labels, ..., reduction="none")``:

* ``logits``: float ``[N, C]`` raw scores, ``C = K + 1``;
* ``labels``: int64 ``[N]`` in ``0..C-1`` (the detectors put background at 0);
* ``reduction``: ``"none"`` -> ``[N]``; ``"sum"`` / ``"mean"`` -> scalar; ``N == 0``
  gives 0.0 for both (see ``classification.reduce_loss``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from detectors.losses.classification import reduce_loss

__all__ = ["softmax_ce_loss"]


def softmax_ce_loss(logits: Tensor, labels: Tensor, reduction: str = "none") -> Tensor:
    """Cross entropy of a softmax over the classes, ``-log p_u`` for the true class ``u``
    (Fast R-CNN eq. 1, ``L_cls(p, u)``). ``log_softmax`` keeps it finite for large logits.

    Args:
        logits: float ``[N, C]``; labels: int64 ``[N]`` in ``0..C-1``.
    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    loss = F.cross_entropy(logits, labels.long(), reduction="none")
    return reduce_loss(loss, reduction)
