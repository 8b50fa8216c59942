"""One-vs-rest linear SVMs with hard-negative mining, as R-CNN trains its classifiers (Girshick et al.,
CVPR 2014, sec. 2.3 and appendix B; rbgirshick/rcnn ``rcnn_train.m``).

    W, b, stats = mine_and_fit(X, positive, negative, initial, C=1e-3, pos_weight=2.0, rounds=3)

One linear SVM per class on fixed features ``X``. Each class has its own
positives and negatives (R-CNN: the class's ground-truth boxes; proposals with
IoU < 0.3 with every instance of the class). There are far too many negatives
to train on all of them, and most are easy, so the standard hard-negative
mining loop runs: train on the positives and a cache of negatives, score every
negative, add the hard ones (score > -1: inside the margin or misclassified)
to the cache and drop the easy ones (score < -1.2), and train again, until no
new hard negative appears or ``rounds`` trainings are done. The paper: "mAP
stops increasing after only a single pass over all images".

Each training minimises, per class, the L2-loss SVM objective (liblinear's
``-s 1/2``; R-CNN used the L1-loss dual, ``-s 3``, whose hinge is not smooth)::

    0.5 ||w||^2 + C * sum_i  c_i * max(0, 1 - y_i (w . x_i + b))^2,    c_i = pos_weight for positives, 1 else

with L-BFGS in float64 (the bias is not regularised). The loop is deterministic.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

__all__ = ["fit_svms", "mine_and_fit"]

HARD = -1.0  # a negative scoring above this is hard (R-CNN: -1 - 1e-3)
EASY = -1.2  # a cached negative scoring below this leaves the cache (R-CNN's "evict_thresh")


def fit_svms(X: Tensor, positive: Tensor, negative: Tensor, C: float = 1e-3, pos_weight: float = 2.0,
             init: Tuple[Tensor, Tensor] = None, max_iter: int = 200) -> Tuple[Tensor, Tensor, float]:
    """Minimise the objective above for every class at once (they are independent).

    Args:
        X: float ``[N, D]`` features; positive, negative: bool ``[N, K]`` (row i is a positive /
            a negative example of class k; rows may be neither).
        init: starting ``(W [K, D], b [K])`` (warm start), default zeros.
    Returns:
        ``W`` float64 ``[K, D]``, ``b`` ``[K]`` and the final objective (summed over classes).
    """
    X = X.double()
    k = positive.shape[1]
    W0, b0 = init if init is not None else (X.new_zeros((k, X.shape[1])), X.new_zeros(k))
    W = W0.detach().clone().double().requires_grad_(True)
    b = b0.detach().clone().double().requires_grad_(True)
    y = positive.double() * 2 - 1
    weight = torch.where(positive, torch.full_like(y, pos_weight), torch.ones_like(y)) * (positive | negative)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        margin = (1 - y * (X @ W.T + b)).clamp(min=0)
        return 0.5 * (W * W).sum() + C * (weight * margin * margin).sum()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return W.detach(), b.detach(), float(objective())


@torch.no_grad()
def mine_and_fit(X: Tensor, positive: Tensor, negative: Tensor, initial: Tensor, C: float = 1e-3,
                 pos_weight: float = 2.0, rounds: int = 3) -> Tuple[Tensor, Tensor, Dict[str, float]]:
    """SVMs with hard-negative mining (module docstring).

    Args:
        X, positive, negative: as :func:`fit_svms`; initial: bool ``[N]``, the rows whose negatives
            start in the cache (R-CNN starts from the first images).
    Returns:
        ``W [K, D]``, ``b [K]`` and ``{"rounds", "cached_negatives", "hard_negatives_added", "objective"}``.
    """
    cache = negative & initial[:, None]
    W = b = None
    added, objective, r = 0, 0.0, 0
    for r in range(1, rounds + 1):
        W, b, objective = fit_svms(X, positive, cache, C, pos_weight, None if W is None else (W, b))
        scores = X.double() @ W.T + b
        new = negative & ~cache & (scores > HARD)
        if r == rounds or not new.any():
            break
        added += int(new.sum())
        cache = (cache & ~(scores < EASY)) | new
    return W, b, {"rounds": float(r), "cached_negatives": float(cache.sum()),
                  "hard_negatives_added": float(added), "objective": objective}
