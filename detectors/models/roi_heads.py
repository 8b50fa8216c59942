"""The region stage shared by R-CNN, Fast R-CNN and Faster R-CNN: sample regions, score them, detect.

    rois, labels, box_targets = sample_rois(proposals, targets, sampler, box_coder, fg_iou=0.5, bg_iou_lo=0.1)
    embedding, logits, deltas = head(region_features)        # logits [R, K+1], deltas [R, (K+1)*4]
    losses = roi_losses(logits, deltas, labels, box_targets, cls_loss, box_loss)
    detections = detect(scores, deltas, rois, image_size, ...)   # per image, after NMS

Fast R-CNN (Girshick, arXiv 1504.08083) sec. 2.3: a minibatch of R = 128 RoIs from
N = 2 images (64 per image), 25% foreground (IoU >= 0.5 with a ground truth,
labelled with its class), background with IoU in [0.1, 0.5), class 0. The head
outputs a softmax over K + 1 classes and, per class, four box deltas
(``BoxCoder`` weights 10, 10, 5, 5: the targets normalised to about unit
variance, as in the reference code). The losses (eq. 1): classification over
every sampled RoI, box regression over the foreground ones, for their true
class only, both averaged over the sampled RoIs.

Sampling and labelling run under ``no_grad`` (``detectors.assigners.roi_assign``,
torchvision's ``BalancedPositiveNegativeSampler``); the sampled boxes keep any
gradient they carry (non-approximate joint training reads their features with a
warping layer differentiable in the box coordinates).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import remove_small_boxes

from detectors.assigners import roi_assign
from detectors.boxes import BoxCoder, clip_boxes
from detectors.models.postprocess import merge_levels
from detectors.train.runtime import worker_mean

__all__ = ["BoxHead", "sample_rois", "roi_losses", "detect", "ROI_BOX_WEIGHTS"]

ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class BoxHead(nn.Module):
    """Region features ``[R, C, S, S]`` (or ``[R, D]``) -> fc6, fc7 (torchvision's ``TwoMLPHead``) ->
    class logits ``[R, K+1]`` and per-class deltas ``[R, (K+1)*4]`` (``FastRCNNPredictor``).

    Returns ``(embedding [R, rep], logits, deltas)``: the embedding is R-CNN's "fc7"
    feature, the input of its SVMs. The last layers start as in Fast R-CNN: Gaussian
    with std 0.01 (classification) and 0.001 (box regression), zero bias.
    """

    def __init__(self, in_features: int, rep: int, num_classes: int) -> None:
        super().__init__()
        self.fc = TwoMLPHead(in_features, rep)
        self.predictor = FastRCNNPredictor(rep, num_classes + 1)
        for layer, std in ((self.predictor.cls_score, 0.01), (self.predictor.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        embedding = self.fc(x)
        logits, deltas = self.predictor(embedding)
        return embedding, logits, deltas


@torch.no_grad()
def _labels(rois: Tensor, target: Dict[str, Tensor], fg_iou: float, bg_iou_lo: float) -> Tuple[Tensor, Tensor]:
    matched = roi_assign(rois.detach(), target["boxes"], fg_iou, bg_iou_lo)
    labels = torch.full_like(matched, -1)  # -1 ignore, 0 background, k + 1 class k (sampler's convention)
    labels[matched == -1] = 0
    fg = matched >= 0
    labels[fg] = target["labels"][matched[fg]] + 1
    return labels, matched.clamp(min=0)


def sample_rois(proposals: List[Tensor], targets: List[Dict[str, Tensor]], sampler: BalancedPositiveNegativeSampler,
                box_coder: BoxCoder, fg_iou: float = 0.5, bg_iou_lo: float = 0.1, add_gt: bool = True
                ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Per image: the sampled regions ``[S_b, 4]``, their labels ``[S_b]`` (0 background, k + 1 for
    class k) and box targets ``[S_b, 4]`` (deltas to the matched gt; zeros for background).

    ``add_gt``: the ground-truth boxes join the candidates (the reference implementations
    do, so early in training every image has foreground RoIs). The sampler draws with
    ``torch.randperm`` (the global RNG, which checkpoints save).
    """
    candidates = [torch.cat([p, t["boxes"].to(p.dtype)]) if add_gt else p for p, t in zip(proposals, targets)]
    labelled = [_labels(c, t, fg_iou, bg_iou_lo) for c, t in zip(candidates, targets)]
    pos, neg = sampler([lab for lab, _ in labelled])
    rois, labels, box_targets = [], [], []
    for c, t, (lab, gt_idx), p, n in zip(candidates, targets, labelled, pos, neg):
        keep = torch.nonzero(p.bool() | n.bool()).squeeze(1)
        roi, lab, gt_idx = c[keep], lab[keep], gt_idx[keep]
        with torch.no_grad():
            tgt = torch.zeros((keep.numel(), 4), dtype=roi.dtype, device=roi.device)
            fg = lab > 0
            if fg.any():
                tgt[fg] = box_coder.encode(roi.detach()[fg], t["boxes"][gt_idx[fg]].to(roi.dtype))
        rois.append(roi)
        labels.append(lab)
        box_targets.append(tgt)
    return rois, labels, box_targets


def roi_losses(logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor, cls_loss: Callable,
               box_loss: Callable) -> Tuple[Tensor, Tensor]:
    """Fast R-CNN eq. 1 over ``R`` sampled regions: ``cls_loss(logits [R, K+1], labels [R])`` and
    ``box_loss`` of the true class's deltas of the foreground regions, both summed and divided by R."""
    n = max(1.0, worker_mean(labels.numel()))  # over several workers, their mean (detectors.train.runtime)
    fg = torch.nonzero(labels > 0).squeeze(1)
    per_class = deltas.reshape(deltas.shape[0], -1, 4)
    pred = per_class[fg, labels[fg]]
    return (cls_loss(logits, labels, reduction="sum") / n,
            box_loss(pred, box_targets[fg].to(pred.dtype), reduction="sum") / n)


def detect(scores: Tensor, deltas: Tensor, rois: Tensor, image_size: Tuple[int, int], box_coder: BoxCoder,
           score_thresh: float, nms_iou: float, max_dets: int) -> Dict[str, Tensor]:
    """One image's detections from per-class scores and boxes, as the reference test code:
    every (region, class) pair above ``score_thresh`` with its class's regressed box, clipped,
    class-wise NMS, the ``max_dets`` best.

    Args:
        scores: float ``[R, K]`` per foreground class (softmax probabilities, or sigmoid of SVM margins).
        deltas: float ``[R, K, 4]`` per foreground class; rois: float ``[R, 4]`` xyxy.
    """
    r, k = scores.shape
    h, w = image_size
    boxes = box_coder.decode(deltas.reshape(-1, 4), rois.repeat_interleave(k, dim=0))
    boxes = clip_boxes(boxes, h, w)
    flat = scores.reshape(-1)
    labels = torch.arange(k, device=scores.device).repeat(r)
    keep = torch.nonzero(flat > score_thresh).squeeze(1)
    boxes, flat, labels = boxes[keep], flat[keep], labels[keep]
    keep = remove_small_boxes(boxes, 1e-2)
    return merge_levels([boxes[keep]], [flat[keep]], [labels[keep]], nms_iou, max_dets)


class RoIHeads(nn.Module):
    """Fast R-CNN's region stage on whole-image features: sample (training), read region features,
    the box head, losses or detections.

    Args:
        roi_features: ``RoIFeatures`` (pool / align / warp, one level or a pyramid).
        head: ``BoxHead``; cls_loss: a ``SOFTMAX_LOSSES`` entry; box_loss: a ``BOX_LOSSES`` entry.
        rois_per_image, fg_fraction, fg_iou, bg_iou_lo: the minibatch (Fast R-CNN: 64, 0.25, 0.5, 0.1).
    """

    def __init__(self, roi_features: nn.Module, head: BoxHead, cls_loss: Callable, box_loss: Callable, *,
                 rois_per_image: int = 64, fg_fraction: float = 0.25, fg_iou: float = 0.5, bg_iou_lo: float = 0.1,
                 score_thresh: float = 0.05, nms_iou: float = 0.3, max_dets: int = 100) -> None:
        super().__init__()
        self.roi_features, self.head = roi_features, head
        self.cls_loss, self.box_loss = cls_loss, box_loss
        self.sampler = BalancedPositiveNegativeSampler(rois_per_image, fg_fraction)
        self.box_coder = BoxCoder(ROI_BOX_WEIGHTS)
        self.fg_iou, self.bg_iou_lo = fg_iou, bg_iou_lo
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets

    def losses(self, features: List[Tensor], proposals: List[Tensor], targets: List[Dict[str, Tensor]]
               ) -> Dict[str, Tensor]:
        """``{"loss_roi_cls", "loss_roi_box"}`` on a sampled minibatch of ``proposals`` (per image, xyxy)."""
        rois, labels, box_targets = sample_rois(proposals, targets, self.sampler, self.box_coder,
                                                self.fg_iou, self.bg_iou_lo)
        _, logits, deltas = self.head(self.roi_features(features, rois))
        cls, box = roi_losses(logits, deltas, torch.cat(labels), torch.cat(box_targets), self.cls_loss,
                              self.box_loss)
        return {"loss_roi_cls": cls, "loss_roi_box": box}

    def detect(self, features: List[Tensor], proposals: List[Tensor], image_sizes: List[Tuple[int, int]]
               ) -> List[Dict[str, Tensor]]:
        """Detections per image, boxes in the (transformed) image's pixels."""
        _, logits, deltas = self.head(self.roi_features(features, proposals))
        scores = torch.softmax(logits, dim=-1)[:, 1:]
        deltas = deltas.reshape(deltas.shape[0], -1, 4)[:, 1:]
        out = []
        for s, d, p, size in zip(scores.split([len(p) for p in proposals]),
                                 deltas.split([len(p) for p in proposals]), proposals, image_sizes):
            out.append(detect(s, d, p, size, self.box_coder, self.score_thresh, self.nms_iou, self.max_dets))
        return out
