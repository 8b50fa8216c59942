"""R-CNN (Girshick, Donahue, Darrell, Malik, CVPR 2014, arXiv 1311.2524): a CNN on every warped proposal.

Selective-search proposals (``detectors.models.proposals``); each one dilated to leave
``context_pad`` of context around it (the paper: 16 px of a 227 px warp), warped
anisotropically to ``crop_size`` x ``crop_size`` (bilinear, ``roi_align`` on the
normalised image: outside the image is the mean colour, as the paper pads) and
run through the conv body (C4) and two FC layers. Training, as the paper:

1. ``finetune`` phase (SGD): the CNN with a softmax over K + 1 classes and per-class
   box deltas, on minibatches of regions, 25% foreground (IoU >= 0.5), the rest
   background (the paper's 32 + 96 per 128);
2. ``svm`` phase (``kind: fit``, with ``classifier: svm``, the default): one linear
   SVM per class on the frozen fc7 features, positives the ground-truth boxes,
   negatives the proposals with IoU < 0.3 with every instance of the class, fitted
   with hard-negative mining (``detectors.models.svm``), in one pass of the training set.

At test every proposal is scored by the SVMs (or the softmax, ``classifier:
softmax``, or before the SVMs exist); detection scores are ``sigmoid(margin)``
(monotone, so the ranking and AP are the SVMs'). The box regression is the fine-tuned
per-class deltas (the paper fits ridge regressors on pool5; same role).

Eval-mode ``stage_times`` (ms): ``proposals`` (selective search) and ``regions``
(warping, the CNN on every region, the classifiers, NMS).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Callable, Dict, List, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import box_iou, roi_align

from detectors.boxes import BoxCoder
from detectors.losses import SOFTMAX_LOSSES, smooth_l1_loss
from detectors.models.common import Count, CropSide, ImageSide, RoIsPerImage, Width
from detectors.models.contract import register_detector
from detectors.models.fast_rcnn import ROI_ROLES, ProposalModel
from detectors.models.roi_heads import ROI_BOX_WEIGHTS, BoxHead, detect, roi_losses, sample_rois
from detectors.models.two_stage import (StageClock, make_transform, resize_boxes_to, scale_preset,
                                        single_level_backbone)
from detectors.models.proposals import SelectiveSearch
from detectors.registry import Interval, OpenUnit
from detectors.models.svm import mine_and_fit

ContextPad = Annotated[float, Interval(ge=0, lt=0.5)]
SvmC = Annotated[float, Interval(gt=0, le=1e6)]
SvmWeight = Annotated[float, Interval(gt=0, le=1000)]
Rounds = Annotated[int, Interval(ge=1, le=100)]
FEATURE_NORM = 20.0  # R-CNN scales features to this mean L2 norm before the SVMs (rcnn_scale_features.m)


def dilate(boxes: Tensor, pad: float) -> Tensor:
    """Grow xyxy boxes about their centres so that, warped to a square of side S, the original
    box covers the central ``S * (1 - 2 * pad)`` (R-CNN: 16 px of context at 227, pad = 16/227)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 / (1 - 2 * pad)
    return torch.cat([c - half, c + half], dim=1)


class RCNN(ProposalModel):
    """``model(images, targets=None)``, torchvision style.

    Args:
        cnn: ``NamedFeatures`` with one map (applied to each crop); head: ``BoxHead``; svm: ``nn.Linear(rep, K)``.
        crop_size: side of the warped crop; pooled: the CNN map is max-pooled to ``pooled x pooled``.
        classifier: ``"svm"`` or ``"softmax"``; svm_*: see ``detectors.models.svm.mine_and_fit``.
        region_batch: regions per CNN call at test and while fitting the SVMs (memory, not results).
    """

    def __init__(self, *, cnn: nn.Module, head: BoxHead, svm: nn.Linear, transform: nn.Module,
                 proposals: SelectiveSearch, cls_loss: Callable, box_loss: Callable, crop_size: int, pooled: int,
                 context_pad: float, classifier: str, rois_per_image: int, fg_fraction: float, fg_iou: float,
                 svm_c: float, svm_pos_weight: float, svm_neg_iou: float, mining_rounds: int,
                 score_thresh: float, nms_iou: float, max_dets: int, region_batch: int = 512) -> None:
        super().__init__()
        self.cnn, self.head, self.svm, self.transform = cnn, head, svm, transform
        self.proposals = proposals
        self.cls_loss, self.box_loss = cls_loss, box_loss
        self.crop_size, self.pooled, self.context_pad = crop_size, pooled, context_pad
        self.classifier = classifier
        self.sampler = BalancedPositiveNegativeSampler(rois_per_image, fg_fraction)
        self.box_coder = BoxCoder(ROI_BOX_WEIGHTS)
        self.fg_iou = fg_iou
        self.svm_c, self.svm_pos_weight, self.svm_neg_iou, self.mining_rounds = (svm_c, svm_pos_weight, svm_neg_iou,
                                                                                 mining_rounds)
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets
        self.region_batch = region_batch
        self.register_buffer("svm_ready", torch.zeros((), dtype=torch.bool))  # saved with the weights
        self.stage_times: Dict[str, float] = {}

    def regions(self, tensors: Tensor, boxes: List[Tensor]):
        """Warp each box of each image (``tensors`` ``[B, 3, H, W]`` normalised, boxes in its pixels)
        and run the CNN and the head: ``(embedding [R, rep], logits [R, K+1], deltas [R, (K+1)*4])``."""
        crops = roi_align(tensors, [dilate(b.detach(), self.context_pad) for b in boxes], self.crop_size, 1.0,
                          sampling_ratio=0, aligned=True)  # 0: as many samples as the region needs (no aliasing)
        outs = []
        for chunk in crops.split(self.region_batch):
            fmap = next(iter(self.cnn(chunk).values()))
            outs.append(self.head(F.adaptive_max_pool2d(fmap, self.pooled)))
        if not outs:  # no region at all
            return self.head(crops.new_zeros((0, self.head.fc.fc6.in_features)))
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("R-CNN in train mode needs targets")
        device = images[0].device
        clock = StageClock()
        original = [tuple(img.shape[-2:]) for img in images]
        with clock.stage("proposals", device):
            proposals = self.proposals(images)
        if self.training:
            image_list, targets = self.transform(images, targets)
            proposals = resize_boxes_to(proposals, original, image_list.image_sizes)
            # R-CNN fine-tuning: every region below IoU 0.5 is background (bg_iou_lo 0).
            rois, labels, box_targets = sample_rois(proposals, targets, self.sampler, self.box_coder, self.fg_iou, 0.0)
            _, logits, deltas = self.regions(image_list.tensors, rois)
            cls, box = roi_losses(logits, deltas, torch.cat(labels), torch.cat(box_targets), self.cls_loss,
                                  self.box_loss)
            return {"loss_roi_cls": cls, "loss_roi_box": box}
        with clock.stage("regions", device):
            image_list, _ = self.transform(images)
            proposals = resize_boxes_to(proposals, original, image_list.image_sizes)
            embedding, logits, deltas = self.regions(image_list.tensors, proposals)
            scores = self.scores(embedding, logits)
            deltas = deltas.reshape(deltas.shape[0], -1, 4)[:, 1:]
            sizes = [len(p) for p in proposals]
            detections = [detect(s, d, p, size, self.box_coder, self.score_thresh, self.nms_iou, self.max_dets)
                          for s, d, p, size in zip(scores.split(sizes), deltas.split(sizes), proposals,
                                                   image_list.image_sizes)]
            detections = self.transform.postprocess(detections, image_list.image_sizes, original)
        self.stage_times = clock.times
        return detections

    def scores(self, embedding: Tensor, logits: Tensor) -> Tensor:
        """Per foreground class ``[R, K]``: sigmoid of the SVM margins once they are fitted, else softmax."""
        if self.classifier == "svm" and bool(self.svm_ready):
            return torch.sigmoid(self.svm(embedding))
        return torch.softmax(logits, dim=-1)[:, 1:]

    @torch.no_grad()
    def fit_phase(self, phase, dataset, device) -> Dict[str, float]:
        """R-CNN's SVM training: fc7 features of every training image's ground truths and proposals
        (the CNN frozen), then ``detectors.models.svm.mine_and_fit``. Returns figures for the epoch report."""
        was_training = self.training
        self.eval()
        feats, positive, negative, first = [], [], [], []
        num_classes = self.svm.out_features
        initial_images = max(1, math.ceil(0.1 * len(dataset)))  # the cache starts with the first 10% of images
        for n, image_id in enumerate(dataset.image_ids):
            image, target = dataset.load_image(image_id).to(device), dataset.target(image_id)
            props = self.proposals([image])[0]
            image_list, _ = self.transform([image])
            size = [tuple(image.shape[-2:])]
            gt, props_r = resize_boxes_to([target["boxes"].to(device), props], size * 2, image_list.image_sizes * 2)
            embedding = self.regions(image_list.tensors, [torch.cat([gt, props_r])])[0]
            g, p = gt.shape[0], props.shape[0]
            pos = torch.zeros((g + p, num_classes), dtype=torch.bool, device=device)
            pos[torch.arange(g, device=device), target["labels"].to(device)] = True
            # a proposal is a negative of class k when its IoU with every instance of k is below svm_neg_iou
            iou = box_iou(props, target["boxes"].to(device))  # [P, G]
            onehot = F.one_hot(target["labels"].to(device), num_classes).to(iou.dtype)  # [G, K]
            best = (iou[:, :, None] * onehot[None]).amax(dim=1) if g else iou.new_zeros((p, num_classes))
            neg = torch.cat([torch.zeros((g, num_classes), dtype=torch.bool, device=device), best < self.svm_neg_iou])
            feats.append(embedding)
            positive.append(pos)
            negative.append(neg)
            first.append(torch.full((g + p,), n < initial_images, dtype=torch.bool, device=device))
        X = torch.cat(feats)
        scale = FEATURE_NORM / X.norm(dim=1).mean().clamp(min=1e-12)
        W, b, stats = mine_and_fit(X * scale, torch.cat(positive), torch.cat(negative), torch.cat(first),
                                   self.svm_c, self.svm_pos_weight, self.mining_rounds)
        self.svm.weight.copy_((W * scale).to(self.svm.weight.dtype))  # fold the feature scaling into w
        self.svm.bias.copy_(b.to(self.svm.bias.dtype))
        self.svm_ready.fill_(True)
        self.train(was_training)
        return {f"svm/{k}": v for k, v in stats.items()}


def rcnn_phases(params: dict, train) -> Optional[list]:
    """Fine-tuning by SGD for ``train.epochs``, then (``classifier: svm``) the SVMs, fitted in one pass."""
    if params["classifier"] != "svm":
        return None
    return [{"name": "finetune", "epochs": train.epochs},
            {"name": "svm", "epochs": 1, "kind": "fit", "trainable": ["svm"]}]


@register_detector("rcnn", roles=ROI_ROLES, primary="roi_cls", losses=("loss_roi_cls", "loss_roi_box"),
                   phases=rcnn_phases)
def build_rcnn(num_classes: int, scale: str = "tiny", roi_cls_loss: Optional[Callable] = None,
               roi_box_loss: Optional[Callable] = None, classifier: Literal["svm", "softmax"] = "svm",
               max_proposals: Count = 2000, selective_search: Literal["fast", "quality"] = "fast",
               crop_size: Optional[CropSide] = None, context_pad: ContextPad = 16 / 227,
               rois_per_image: RoIsPerImage = 64, fg_fraction: OpenUnit = 0.25, fg_iou: OpenUnit = 0.5,
               svm_c: SvmC = 1e-3, svm_pos_weight: SvmWeight = 2.0, svm_neg_iou: OpenUnit = 0.3,
               mining_rounds: Rounds = 3, rep: Optional[Width] = None,
               min_size: Optional[ImageSide] = None, max_size: Optional[ImageSide] = None,
               score_thresh: float = 0.05, nms_iou: float = 0.3, max_dets: int = 100) -> RCNN:
    """Build an R-CNN; ``None`` takes the scale's preset (``detectors.models.two_stage.SCALES``).

    The CNN is the same conv body as Fast / Faster R-CNN's (to C4, stride 16); its map of a
    ``crop_size`` crop is max-pooled to at most the RoI size (7: the paper's pool5 is 6x6).
    Test NMS 0.3 per class (the reference code's), unless the study's ``eval.nms_iou`` sets one.
    """
    cfg = scale_preset(scale)
    cfg.update({k: v for k, v in dict(crop_size=crop_size, rep=rep, min_size=min_size, max_size=max_size).items()
                if v is not None})
    cnn = single_level_backbone(scale, cfg)
    pooled = max(1, min(cfg["crop_size"] // cnn.strides[0], cfg["roi_size"]))
    head = BoxHead(cnn.out_channels * pooled * pooled, cfg["rep"], num_classes)
    svm = nn.Linear(cfg["rep"], num_classes)
    nn.init.zeros_(svm.weight)
    nn.init.zeros_(svm.bias)
    return RCNN(cnn=cnn, head=head, svm=svm, transform=make_transform(cfg, cnn.strides[0]),
                proposals=SelectiveSearch(max_proposals, mode=selective_search),
                cls_loss=roi_cls_loss or SOFTMAX_LOSSES.get("softmax_ce"),
                box_loss=roi_box_loss or partial(smooth_l1_loss, beta=1.0), crop_size=cfg["crop_size"],
                pooled=pooled, context_pad=context_pad, classifier=classifier, rois_per_image=rois_per_image,
                fg_fraction=fg_fraction, fg_iou=fg_iou, svm_c=svm_c, svm_pos_weight=svm_pos_weight,
                svm_neg_iou=svm_neg_iou, mining_rounds=mining_rounds, score_thresh=score_thresh,
                nms_iou=nms_iou, max_dets=max_dets)
