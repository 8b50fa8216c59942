"""Loss functions and their registries.

``CLS_LOSSES`` ("ce", "balanced_ce", "focal", "qfl") and ``BOX_LOSSES`` ("smooth_l1",
"l1") map study-file names to pure functions. ``Registry.parameters(name)``
exposes the tunable keyword parameters (ce: none; balanced_ce: alpha; focal:
gamma, alpha; qfl: beta; smooth_l1: beta) plus ``reduction``, which callers filter out.
"""
from detectors.registry import Registry

from detectors.losses.box import l1_loss, smooth_l1_loss
from detectors.losses.classification import (
    balanced_ce_loss,
    ce_loss,
    focal_loss,
    inverse_frequency_alpha,
    reduce_loss,
)
from detectors.losses.gfl import (
    distribution_focal_loss,
    gaussian_nll_loss,
    giou_loss,
    integral,
    quality_focal_loss,
)

__all__ = [
    "CLS_LOSSES",
    "BOX_LOSSES",
    "ce_loss",
    "balanced_ce_loss",
    "focal_loss",
    "inverse_frequency_alpha",
    "reduce_loss",
    "smooth_l1_loss",
    "l1_loss",
    "quality_focal_loss",
    "distribution_focal_loss",
    "integral",
    "giou_loss",
    "gaussian_nll_loss",
]

# Registered here rather than with decorators in the modules, so the loss
# modules stay plain functions importable without the registry.
CLS_LOSSES = Registry("classification loss")
CLS_LOSSES.register("ce")(ce_loss)
CLS_LOSSES.register("balanced_ce")(balanced_ce_loss)
CLS_LOSSES.register("focal")(focal_loss)
CLS_LOSSES.register("qfl")(quality_focal_loss)  # soft targets: the GFL joint score

BOX_LOSSES = Registry("box loss")
BOX_LOSSES.register("smooth_l1")(smooth_l1_loss)
BOX_LOSSES.register("l1")(l1_loss)
