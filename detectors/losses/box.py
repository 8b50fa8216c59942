"""Box regression losses on encoded deltas (see ``detectors.boxes.BoxCoder``).

Pure functions ``fn(pred, target, ..., reduction="none")`` with the same
reduction and empty-input rules as the classification losses: ``"none"`` keeps
the elementwise shape (``[N, 4]`` for deltas), ``"sum"`` / ``"mean"`` give a
scalar, ``N == 0`` gives 0.0 for both, an unknown reduction raises ValueError.
"""
from __future__ import annotations

import torch
from torch import Tensor

from detectors.losses.classification import reduce_loss

__all__ = ["smooth_l1_loss", "l1_loss", "squared_error_loss"]


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0 / 9, reduction: str = "none") -> Tensor:
    """Smooth L1 (Huber scaled by 1/beta), Fast R-CNN eq. 3, as in fvcore/Detectron2::

        |x| < beta:  0.5 * x^2 / beta
        otherwise:   |x| - 0.5 * beta

    ``beta = 1/9`` is Detectron2's RetinaNet / RPN default; ``beta = 0`` is
    exactly L1 (the quadratic branch vanishes; handled separately to avoid 0/0).

    Args:
        pred, target: float tensors of the same shape, typically ``[N, 4]`` deltas.
        beta: transition point, ``>= 0``.
    Returns:
        elementwise loss for ``reduction="none"``, else a scalar.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    diff = (pred - target).abs()
    if beta < 1e-5:
        # fvcore's threshold: below it 0.5 * x^2 / beta is numerically unsafe.
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return reduce_loss(loss, reduction)


def l1_loss(pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
    """L1 loss ``|pred - target|`` (RetinaNet in torchvision regresses with it).

    Args:
        pred, target: float tensors of the same shape, typically ``[N, 4]`` deltas.
    Returns:
        elementwise loss for ``reduction="none"``, else a scalar.
    """
    return reduce_loss((pred - target).abs(), reduction)


def squared_error_loss(pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
    """Squared error ``(pred - target)^2``: every term of YOLOv1's sum-squared loss (Redmon et al.,
    arXiv 1506.02640, eq. 3) on box coordinates, confidences and class probabilities.

    Args:
        pred, target: float tensors of the same shape.
    Returns:
        elementwise loss for ``reduction="none"``, else a scalar.
    """
    return reduce_loss((pred - target) ** 2, reduction)
