"""Loss functions and their registries.

``CLS_LOSSES`` ("ce", "balanced_ce", "focal", "qfl") and ``BOX_LOSSES`` ("smooth_l1",
"l1") map study-file names to pure functions; ``SOFTMAX_LOSSES`` ("softmax_ce", heads
with a background class: SSD) and ``PROB_LOSSES`` ("sse", YOLOv1's class probabilities)
likewise. ``Registry.parameters(name)``
exposes the tunable keyword parameters (ce: none; balanced_ce: alpha; focal:
gamma, alpha; qfl: beta; smooth_l1: beta) plus ``reduction``, which callers filter out.
"""
import functools
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Union

from detectors.registry import Interval, Probability, Registry

from detectors.losses.box import l1_loss, smooth_l1_loss, squared_error_loss
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
from detectors.losses.softmax import SOFTMAX_LOSSES, softmax_ce_loss

__all__ = [
    "CLS_LOSSES",
    "BOX_LOSSES",
    "SOFTMAX_LOSSES",
    "PROB_LOSSES",
    "softmax_ce_loss",
    "squared_error_loss",
    "build_loss",
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
# modules stay plain functions importable without the registry. Each entry
# declares its study-facing parameters and ranges; ``prepare(params, context)``
# (optional) turns study values into call values once the data is known.
CLS_LOSSES = Registry("classification loss", injected=("reduction",))
BOX_LOSSES = Registry("box loss", injected=("reduction",))

# A scalar in [0, 1], per-class weights in [0, 1000] (one per class of the dataset),
# "inverse_frequency" (computed from the training set's class counts when the model
# is built) or null (no weighting).
ALPHA = Optional[Union[Probability, List[Annotated[float, Interval(ge=0, le=1000)]], Literal["inverse_frequency"]]]
# The focusing exponent of focal loss (gamma) and QFL (beta). Above 20 even an example
# scored halfway (|target - p| = 0.5) weighs 0.5^20 < 1e-6: nothing would train. The
# papers try 0..5 (focal loss Table 1b) and 0..4 (GFL Table 1c).
FOCUS = Annotated[float, Interval(ge=0, le=20)]
# Smooth L1's switch from quadratic to linear, in box-delta units (deltas are a few units).
SMOOTH_L1_BETA = Annotated[float, Interval(ge=0, le=100)]


def _resolve_alpha(params: Dict[str, Any], context: Dict[str, Any]) -> Dict[str, Any]:
    if params.get("alpha") == "inverse_frequency":
        counts = context["class_counts"]
        # A generated set can hold no object at all (objects_per_image from 0, few images):
        # with no positive to weigh, every per-class alpha gives the same loss; take 1s.
        alpha = inverse_frequency_alpha(counts) if sum(counts) > 0 else [1.0] * len(counts)
        return {**params, "alpha": alpha}
    return params


CLS_LOSSES.register("ce")(ce_loss)
# ``per_class``: list-valued parameters that take one value per class of the dataset.
CLS_LOSSES.register("balanced_ce", types={"alpha": ALPHA}, prepare=_resolve_alpha,
                    per_class=("alpha",))(balanced_ce_loss)
CLS_LOSSES.register("focal", types={"gamma": FOCUS, "alpha": ALPHA}, prepare=_resolve_alpha,
                    per_class=("alpha",))(focal_loss)
CLS_LOSSES.register("qfl", types={"beta": FOCUS}, soft_targets=True)(quality_focal_loss)  # the GFL joint score

BOX_LOSSES.register("smooth_l1", types={"beta": SMOOTH_L1_BETA})(smooth_l1_loss)
BOX_LOSSES.register("l1")(l1_loss)

# YOLOv1's class probabilities are linear outputs trained by squared error (paper eq. 3);
# a sigmoid or softmax loss would presume logits its head does not produce.
PROB_LOSSES = Registry("class-probability loss", injected=("reduction",))
PROB_LOSSES.register("sse")(squared_error_loss)


def build_loss(registry: Registry, name: str, params: Dict[str, Any], context: Dict[str, Any]) -> Callable:
    """The loss ``name`` with its study params bound (after the entry's ``prepare``)."""
    entry = registry.entry(name)
    prepare = entry.meta.get("prepare")
    params = prepare(dict(params), context) if prepare else dict(params)
    return functools.partial(entry.fn, **params)
