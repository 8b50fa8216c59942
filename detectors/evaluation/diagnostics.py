"""Loss diagnostics computed by the worker on the val split, plotted by the report.

Focal loss paper, Figure 4 (arXiv 1708.02002, sec. 5.1): run the trained model
over many images, take the classification loss of every positive and every
negative anchor, sort each group from low to high loss, normalise it to sum to
one and read the cumulative share of the loss against the fraction of anchors.
With gamma = 0 the negatives' curve rises early (easy negatives carry much of
the loss); as gamma grows nearly all negative loss sits in a few hard anchors.
Also: the share of the total loss that comes from easy negatives, p_t > 0.9.

For quality-aware heads (GFL, IoU-aware, centerness), ``score_iou_diagnostics``
pairs each positive's predicted score with the IoU of its box with the matched
ground truth (GFL paper, arXiv 2006.04388, fig. 2): the joint score should track IoU.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from detectors.data.coco import collate

CDF_POINTS = 101


def cumulative_share(losses: torch.Tensor, points: int = CDF_POINTS) -> Dict[str, List[float]]:
    """Sorted ascending, cumulative loss / total loss, sampled at ``points`` fractions of the anchors."""
    fraction = torch.linspace(0, 1, points)
    if losses.numel() == 0 or float(losses.sum()) <= 0:
        return {"fraction": fraction.tolist(), "cumulative_loss": [0.0] * points}
    cum = torch.cumsum(losses.double().sort().values, 0) / losses.double().sum()
    idx = (fraction * (losses.numel() - 1)).round().long()
    # fraction 0 means "no anchors yet": zero loss by definition
    values = torch.where(fraction == 0, torch.zeros(()), cum[idx].float())
    return {"fraction": fraction.tolist(), "cumulative_loss": values.tolist()}


@torch.no_grad()
def classification_loss_diagnostics(model, dataset, batch_size: int, device, max_images: int = 200) -> dict:
    """Figure-4 curves and the easy-negative share for any model with ``classification_terms``.

    An anchor is positive when its target row has a 1; a negative anchor is easy
    when every class probability is below 0.1 (so p_t > 0.9 for every class).
    """
    model.eval()
    n = min(len(dataset), max_images)
    loader = DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate)
    pos_losses, neg_losses, easy_neg_total = [], [], 0.0
    for images, targets in loader:
        images = [img.to(device) for img in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        logits, tgt = model.classification_terms(images, targets)
        per_anchor = model.cls_loss(logits, tgt, reduction="none").sum(1).cpu()
        pos = (tgt.sum(1) > 0).cpu()
        easy = (~pos) & (torch.sigmoid(logits).max(1).values.cpu() < 0.1)
        pos_losses.append(per_anchor[pos])
        neg_losses.append(per_anchor[~pos])
        easy_neg_total += float(per_anchor[easy].sum())
    pos_all, neg_all = torch.cat(pos_losses), torch.cat(neg_losses)
    total = float(pos_all.sum() + neg_all.sum())
    return {
        "images": n,
        "positive": cumulative_share(pos_all),
        "negative": cumulative_share(neg_all),
        "easy_negative_share": easy_neg_total / total if total > 0 else 0.0,
        "num_positive": int(pos_all.numel()),
        "num_negative": int(neg_all.numel()),
        "loss_positive": float(pos_all.sum()),
        "loss_negative": float(neg_all.sum()),
    }


@torch.no_grad()
def score_iou_diagnostics(model, dataset, batch_size: int, device, max_images: int = 200,
                          max_points: int = 2000, bins: int = 10) -> dict:
    """:meth:`DenseDetector.score_iou_pairs` over (the first ``max_images`` of) a dataset, JSON-able.

    ``points``: up to ``max_points`` (score, iou) pairs, evenly subsampled; ``pearson`` and
    ``spearman`` (ties ranked by order) correlations over all pairs, None when undefined;
    ``binned``: mean score per IoU bin of width 1/bins (None for an empty bin).
    """
    model.eval()
    n = min(len(dataset), max_images)
    scores, ious = [], []
    for images, targets in DataLoader(Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate):
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        pairs = model.score_iou_pairs([img.to(device) for img in images], targets)
        scores.append(pairs["score"].cpu().double())
        ious.append(pairs["iou"].cpu().double())
    score, iou = torch.cat(scores), torch.cat(ious)

    def corr(a: Tensor, b: Tensor) -> Optional[float]:
        if a.numel() < 2 or float(a.std()) == 0 or float(b.std()) == 0:
            return None
        return float(torch.corrcoef(torch.stack((a, b)))[0, 1])

    def ranks(x: Tensor) -> Tensor:
        return torch.empty_like(x).index_put_((x.argsort(),), torch.arange(x.numel(), dtype=x.dtype))

    keep = torch.linspace(0, max(0, score.numel() - 1), min(max_points, score.numel())).round().long()
    which = (iou * bins).long().clamp(max=bins - 1)
    mean_score = [float(score[which == i].mean()) if bool((which == i).any()) else None for i in range(bins)]
    return {"images": n, "num_positive": int(score.numel()), "pearson": corr(score, iou),
            "spearman": corr(ranks(score), ranks(iou)),
            "points": {"score": score[keep].tolist(), "iou": iou[keep].tolist()},
            "binned": {"iou_bin_centre": [(i + 0.5) / bins for i in range(bins)], "mean_score": mean_score}}

