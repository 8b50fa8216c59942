"""What the detectors share that is not a building block: the ImageNet
normalisation of their transforms and the ranges of their study-facing parameters.

A range is an ``Annotated`` type (``detectors.registry.Interval``) a builder
puts on a keyword parameter; the registry reads it, so a study file's value
outside it is a validation error naming the key. Every number has both ends:
the upper ends are generous and only turn a typo into a validation error instead
of an allocation in a worker (a 10^5-channel head) or a transform that upsamples
every image to 10^5 px. A range used by one detector only lives in its module.
"""
from __future__ import annotations

from typing import Annotated

from detectors.registry import Interval

# torchvision's ImageNet statistics (RGB, images in [0, 1]); every transform normalises with them.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# All detectors
Width = Annotated[int, Interval(ge=1, le=4096)]             # channels of a head, FPN or FC layer
ImageSide = Annotated[int, Interval(ge=32, le=4096)]        # a side the transform resizes images to, px
TopK = Annotated[int, Interval(ge=1, le=100_000)]           # candidates kept before NMS

# RetinaNet and the dense detectors
NumConvs = Annotated[int, Interval(ge=0, le=16)]
InStrides = Annotated[float, Interval(gt=0, le=64)]         # a length in units of the level's stride

# R-CNN, Fast R-CNN and Faster R-CNN
Count = Annotated[int, Interval(ge=1, le=100_000)]          # proposals, anchors per image, top-N
RoIsPerImage = Annotated[int, Interval(ge=1, le=4096)]
RoISize = Annotated[int, Interval(ge=1, le=32)]             # bins per side of a pooled region
CropSide = Annotated[int, Interval(ge=8, le=1024)]
Epochs = Annotated[int, Interval(ge=1, le=10_000)]
UnitLow = Annotated[float, Interval(ge=0, lt=1)]            # a lower IoU bound that may be 0
