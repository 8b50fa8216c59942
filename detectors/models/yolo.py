"""YOLOv1 (Redmon et al., "You Only Look Once: Unified, Real-Time Object Detection", arXiv 1506.02640).

The image, resized to a fixed square, is divided into an ``S x S`` grid. A
fully connected head predicts for every cell ``B`` boxes ``(x, y, sqrt w,
sqrt h, confidence)`` and ``C`` class probabilities conditioned on an object
(sec. 2): ``x, y`` are the box centre's offset inside its cell (cell units),
``sqrt w, sqrt h`` the square roots of the box size relative to the image,
and the confidence is trained toward the IoU of the predicted box with the
ground truth. All outputs are linear (sec. 2.2, "a linear activation function
for the final layer").

Training (sec. 2.2, eq. 3): a cell is responsible for the object whose centre
falls in it (one object per cell: the paper's cell "can only have one class";
when several centres share a cell the largest box wins); of its ``B``
predictors, the one whose current box has the highest IoU with that object is
responsible for it. The model returns the four sums of squared errors of eq. 3,
unweighted and summed per image (averaged over the batch):

- ``loss_box``: ``(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2``
  of responsible predictors;
- ``loss_obj``: ``(C - IoU)^2`` of responsible predictors;
- ``loss_noobj``: ``C^2`` of every other predictor;
- ``loss_cls``: ``sum_c (p(c) - p^(c))^2`` of cells holding an object (the
  injected ``cls_loss``, ``sse``).

``lambda_coord = 5`` and ``lambda_noobj = 0.5`` weight these sums in the
paper's loss; here they are the detector's declared default loss weights
(``box: 5``, ``noobj: 0.5``), applied by the training loop like every other
loss weight and overridable from ``train.loss_weights``.

Test time (sec. 2): class-specific score ``confidence x p(c)`` per box and
class, then class-wise NMS.
"""
from __future__ import annotations

from typing import Annotated, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectors.boxes import aligned_box_iou, clip_boxes
from detectors.losses import PROB_LOSSES, squared_error_loss
from detectors.models.backbones import TINY_WIDTHS, TinyBody
from detectors.models.common import IMAGENET_MEAN, IMAGENET_STD, ImageSide, TopK, Width
from detectors.models.contract import LossRole, register_detector
from detectors.models.postprocess import level_candidates, merge_levels
from detectors.registry import Interval, Probability

GridSize = Annotated[int, Interval(ge=1, le=64)]
BoxesPerCell = Annotated[int, Interval(ge=1, le=16)]

# ``paper``: S = 7, B = 2 at 448 px, conv features of 7 x 7 x 1024 (stride 64) into a
# 4096-wide fully connected layer (sec. 2.2; a random-init ResNet-50 stands in for
# the paper's 24 conv layers, as everywhere at paper scale here). ``tiny``: 128 px
# images and 16 px cells (S = 8) from the tiny body's stride-16 map (8 x 8), sized
# for 2 CPU cores. As in the paper, the last conv map has the grid's resolution.
SCALES = {
    "tiny": dict(widths=TINY_WIDTHS, input_size=128, grid_size=8, neck_width=64, fc_width=512,
                 layer="layer4", channels=64, neck_stride=1),
    "paper": dict(widths=None, input_size=448, grid_size=7, neck_width=1024, fc_width=4096,
                  layer="layer4", channels=2048, neck_stride=2),
}


def _leaky(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


class YoloHead(nn.Module):
    """Conv neck -> pool to ``S x S`` -> FC -> leaky ReLU -> dropout -> FC, reshaped to ``[N, S, S, 5B + C]``.

    The pool is the identity at the scale's input size (the neck's map is already ``S x S``)
    and keeps the head's shape when a study changes the input size or the grid.

    Per cell the last dimension holds ``B`` groups ``(x, y, sqrt w, sqrt h, conf)``,
    then ``C`` class probabilities.
    """

    def __init__(self, in_channels: int, neck_width: int, fc_width: int, grid_size: int,
                 boxes_per_cell: int, num_classes: int, dropout: float, neck_stride: int = 1) -> None:
        super().__init__()
        self.S, self.B, self.C = grid_size, boxes_per_cell, num_classes
        self.neck = _leaky(in_channels, neck_width, neck_stride)
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        per_cell = 5 * boxes_per_cell + num_classes
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(neck_width * grid_size ** 2, fc_width),
                                nn.LeakyReLU(0.1, inplace=True), nn.Dropout(dropout),
                                nn.Linear(fc_width, grid_size ** 2 * per_cell))
        last = self.fc[-1]
        nn.init.normal_(last.weight, std=0.01)
        # Start every box centred in its cell at about 0.3 x 0.3 of the image, so the first
        # IoUs (confidence targets, responsible predictor) are not all zero.
        bias = torch.zeros(grid_size, grid_size, per_cell)
        for b in range(boxes_per_cell):
            bias[..., 5 * b:5 * b + 4] = torch.tensor([0.5, 0.5, 0.3, 0.3])
        with torch.no_grad():
            last.bias.copy_(bias.flatten())

    def forward(self, feat: Tensor) -> Tensor:
        n = feat.shape[0]
        return self.fc(self.pool(self.neck(feat))).view(n, self.S, self.S, 5 * self.B + self.C)


def cell_indices(S: int, device=None) -> Tuple[Tensor, Tensor]:
    """Column and row index of every cell, ``[S, S]`` each (row-major grid)."""
    rows, cols = torch.meshgrid(torch.arange(S, device=device), torch.arange(S, device=device), indexing="ij")
    return cols.float(), rows.float()


def decode_boxes(raw_boxes: Tensor, height: float, width: float) -> Tensor:
    """``[S, S, B, 4]`` raw ``(x, y, sqrt w, sqrt h)`` -> ``[S, S, B, 4]`` xyxy pixels.

    ``x, y`` are cell units from the cell's top-left corner; the size is squared,
    so a negative square root still gives a valid (positive) size.
    """
    S = raw_boxes.shape[0]
    col, row = cell_indices(S, raw_boxes.device)
    cx = (col[..., None] + raw_boxes[..., 0]) * (width / S)
    cy = (row[..., None] + raw_boxes[..., 1]) * (height / S)
    w, h = raw_boxes[..., 2] ** 2 * width, raw_boxes[..., 3] ** 2 * height
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


@torch.no_grad()
def encode_targets(boxes: Tensor, labels: Tensor, height: float, width: float, S: int,
                   num_classes: int) -> Dict[str, Tensor]:
    """One image's ground truth on the grid (paper sec. 2: the cell holding an object's centre).

    Args:
        boxes: float ``[G, 4]`` xyxy pixels of the (resized) input image; labels: int64 ``[G]``.
    Returns:
        ``obj`` bool ``[S, S]`` (cell holds an object), ``box`` ``[S, S, 4]`` regression
        targets ``(x, y, sqrt w, sqrt h)`` (cell offsets, square roots of the size relative
        to the image), ``gt`` ``[S, S, 4]`` the object's xyxy box, ``cls`` ``[S, S, C]``
        one-hot. Cells without an object hold zeros. Where several centres fall into one
        cell the largest box wins (ties: the later gt).
    """
    obj = torch.zeros(S, S, dtype=torch.bool, device=boxes.device)
    box = torch.zeros(S, S, 4, device=boxes.device)
    gt = torch.zeros(S, S, 4, device=boxes.device)
    cls = torch.zeros(S, S, num_classes, device=boxes.device)
    if boxes.shape[0] == 0:
        return {"obj": obj, "box": box, "gt": gt, "cls": cls}
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    gx, gy = cx / width * S, cy / height * S
    cols, rows = gx.floor().clamp(0, S - 1).long(), gy.floor().clamp(0, S - 1).long()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in torch.argsort(area, stable=True).tolist():  # ascending: the largest is written last
        r, c = rows[i], cols[i]
        obj[r, c] = True
        box[r, c] = torch.stack((gx[i] - c, gy[i] - r, ((boxes[i, 2] - boxes[i, 0]) / width).clamp(min=0).sqrt(),
                                 ((boxes[i, 3] - boxes[i, 1]) / height).clamp(min=0).sqrt()))
        gt[r, c] = boxes[i]
        cls[r, c] = 0.0
        cls[r, c, labels[i]] = 1.0
    return {"obj": obj, "box": box, "gt": gt, "cls": cls}


@torch.no_grad()
def responsible_predictor(pred_boxes: Tensor, gt_boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """Per cell, the predictor whose box overlaps the cell's object most (paper sec. 2.2).

    Args:
        pred_boxes: ``[S, S, B, 4]`` xyxy pixels; gt_boxes: ``[S, S, 4]`` xyxy pixels.
    Returns:
        (index ``[S, S]`` int64 of the responsible predictor, ties: the lower index;
        IoU ``[S, S, B]`` of every predictor with the cell's object).
    """
    rows, cols, B, _ = pred_boxes.shape
    iou = aligned_box_iou(pred_boxes.reshape(-1, 4), gt_boxes[:, :, None].expand(rows, cols, B, 4).reshape(-1, 4))
    iou = iou.view(rows, cols, B)
    return iou.argmax(dim=-1), iou  # argmax returns the first maximum


class YOLOv1(nn.Module):
    """YOLOv1 with injected body, head and transform (see the module docstring).

    Args:
        body: module mapping the image batch to one feature map (a dict with one entry).
        head: :class:`YoloHead`.
        transform: torchvision ``GeneralizedRCNNTransform`` with ``fixed_size`` (the square input).
        cls_loss: ``fn(pred [M, C], target [M, C], reduction=...)`` on class probabilities.
    """

    def __init__(self, *, body: nn.Module, head: YoloHead, transform: GeneralizedRCNNTransform,
                 cls_loss: Callable[..., Tensor], score_thresh: float = 0.05, nms_iou: float = 0.5,
                 max_dets: int = 100, topk_candidates: int = 1000) -> None:
        super().__init__()
        self.body, self.head, self.transform, self.cls_loss = body, head, transform, cls_loss
        self.S, self.B, self.C = head.S, head.B, head.C
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets
        self.topk_candidates = topk_candidates

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("YOLOv1 in train mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        out = self.head(next(iter(self.body(image_list.tensors).values())))
        if self.training:
            return self.compute_loss(out, targets, image_list.tensors.shape[-2:])
        detections = self.postprocess(out, image_list.image_sizes, image_list.tensors.shape[-2:])
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def split(self, out: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``[N, S, S, 5B + C]`` -> boxes ``[N, S, S, B, 4]``, confidences ``[N, S, S, B]``, probs ``[N, S, S, C]``."""
        n = out.shape[0]
        per_box = out[..., :5 * self.B].reshape(n, self.S, self.S, self.B, 5)
        return per_box[..., :4], per_box[..., 4], out[..., 5 * self.B:]

    def compute_loss(self, out: Tensor, targets: List[Dict[str, Tensor]], size) -> Dict[str, Tensor]:
        height, width = float(size[0]), float(size[1])
        raw_boxes, conf, probs = self.split(out)
        terms = {"loss_box": [], "loss_obj": [], "loss_noobj": [], "loss_cls": []}
        for b, t in enumerate(targets):
            enc = encode_targets(t["boxes"], t["labels"], height, width, self.S, self.C)
            obj = enc["obj"]
            with torch.no_grad():
                resp, iou = responsible_predictor(decode_boxes(raw_boxes[b].detach(), height, width), enc["gt"])
                # 1^obj_ij: cell i holds an object and predictor j is responsible for it
                mask = torch.zeros_like(conf[b], dtype=torch.bool)
                mask.scatter_(-1, resp[..., None], True)
                mask &= obj[..., None]
            box_target = enc["box"][:, :, None].expand_as(raw_boxes[b])
            terms["loss_box"].append(squared_error_loss(raw_boxes[b][mask], box_target[mask], reduction="sum"))
            terms["loss_obj"].append(squared_error_loss(conf[b][mask], iou[mask], reduction="sum"))
            terms["loss_noobj"].append(squared_error_loss(conf[b][~mask], torch.zeros_like(conf[b][~mask]),
                                                          reduction="sum"))
            terms["loss_cls"].append(self.cls_loss(probs[b][obj], enc["cls"][obj], reduction="sum"))
        # The paper's sums run over the cells of one image; average them over the batch.
        return {k: torch.stack(v).sum() / len(targets) for k, v in terms.items()}

    @torch.no_grad()
    def postprocess(self, out: Tensor, image_sizes, size) -> List[Dict[str, Tensor]]:
        """Score ``conf x p(c)`` (both clamped to [0, 1]: the outputs are linear), top-k, class-wise NMS."""
        raw_boxes, conf, probs = self.split(out)
        results = []
        for b, (h, w) in enumerate(image_sizes):
            boxes = decode_boxes(raw_boxes[b], float(size[0]), float(size[1])).reshape(-1, 4)
            scores = (conf[b].clamp(0, 1)[..., None] * probs[b].clamp(0, 1)[:, :, None, :]).reshape(-1, self.C)
            kept, idx, labels = level_candidates(scores, self.score_thresh, self.topk_candidates)
            results.append(merge_levels([clip_boxes(boxes[idx], h, w)], [kept], [labels], self.nms_iou,
                                        self.max_dets))
        return results


def _body(scale: str, cfg: dict) -> nn.Module:
    """One feature map: the tiny conv body's C4 (stride 16), or ResNet-50's C5 (stride 32)."""
    net = resnet50(weights=None) if scale == "paper" else TinyBody(cfg["widths"])
    return IntermediateLayerGetter(net, {cfg["layer"]: "feat"})


@register_detector("yolov1", losses=("loss_box", "loss_obj", "loss_noobj", "loss_cls"),
                   loss_weights={"box": 5.0, "noobj": 0.5}, roles={
                       "cls": LossRole(PROB_LOSSES, "sse", doc="squared error on the cell's class probabilities "
                                       "(paper eq. 3); the linear outputs take no sigmoid or softmax loss")})
def build_yolov1(num_classes: int, scale: str = "tiny", cls_loss: Optional[Callable] = None,
                 grid_size: Optional[GridSize] = None, boxes_per_cell: BoxesPerCell = 2,
                 input_size: Optional[ImageSide] = None, fc_width: Optional[Width] = None,
                 dropout: Probability = 0.5, score_thresh: float = 0.05, nms_iou: float = 0.5,
                 max_dets: int = 100, topk_candidates: TopK = 1000) -> YOLOv1:
    """Build YOLOv1. ``None`` takes the scale's preset (tiny: S 8 at 128 px; paper: S 7 at 448 px).

    ``grid_size`` is S; ``input_size`` the square side images are resized to (aspect
    not kept, as the paper); ``boxes_per_cell`` is B (paper 2).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale '{scale}' (known: {', '.join(SCALES)})")
    cfg = {**SCALES[scale], **{k: v for k, v in dict(grid_size=grid_size, input_size=input_size,
                                                     fc_width=fc_width).items() if v is not None}}
    head = YoloHead(cfg["channels"], cfg["neck_width"], cfg["fc_width"], cfg["grid_size"], boxes_per_cell,
                    num_classes, dropout, neck_stride=cfg["neck_stride"])
    size = cfg["input_size"]
    transform = GeneralizedRCNNTransform(size, size, IMAGENET_MEAN, IMAGENET_STD, size_divisible=1,
                                         fixed_size=(size, size))
    return YOLOv1(body=_body(scale, cfg), head=head, transform=transform, cls_loss=cls_loss or PROB_LOSSES.get("sse"),
                  score_thresh=score_thresh, nms_iou=nms_iou, max_dets=max_dets, topk_candidates=topk_candidates)
