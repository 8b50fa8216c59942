"""Loss functions and their registries.

``CLS_LOSSES`` ("ce", "balanced_ce", "focal", "qfl"), ``BOX_LOSSES`` ("smooth_l1",
"l1") and ``SOFTMAX_LOSSES`` ("softmax_ce": region classifiers over K + 1 classes,
background included) map study-file names to pure functions. ``Registry.parameters(name)``
exposes the tunable keyword parameters (ce: none; balanced_ce: alpha; focal:
gamma, alpha; qfl: beta; smooth_l1: beta) plus ``reduction``, which callers filter out.
"""
import functools
from typing import Any, Callable, Dict, List, Literal, Optional, Union

from detectors.registry import NonNegative, Probability, Registry

from detectors.losses.box import l1_loss, smooth_l1_loss
from detectors.losses.classification import (
    balanced_ce_loss,
    ce_loss,
    focal_loss,
    inverse_frequency_alpha,
    reduce_loss,
)
from detectors.losses.softmax import softmax_ce_loss
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
    "SOFTMAX_LOSSES",
    "build_loss",
    "ce_loss",
    "balanced_ce_loss",
    "focal_loss",
    "inverse_frequency_alpha",
    "reduce_loss",
    "smooth_l1_loss",
    "l1_loss",
    "softmax_ce_loss",
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
SOFTMAX_LOSSES = Registry("region classification loss", injected=("reduction",))

# A scalar in [0, 1], per-class weights >= 0, "inverse_frequency" (computed from the
# training set's class counts when the model is built) or null (no weighting).
ALPHA = Optional[Union[Probability, List[NonNegative], Literal["inverse_frequency"]]]


def _resolve_alpha(params: Dict[str, Any], context: Dict[str, Any]) -> Dict[str, Any]:
    if params.get("alpha") == "inverse_frequency":
        return {**params, "alpha": inverse_frequency_alpha(context["class_counts"])}
    return params


CLS_LOSSES.register("ce")(ce_loss)
CLS_LOSSES.register("balanced_ce", types={"alpha": ALPHA}, prepare=_resolve_alpha)(balanced_ce_loss)
CLS_LOSSES.register("focal", types={"gamma": NonNegative, "alpha": ALPHA}, prepare=_resolve_alpha)(focal_loss)
CLS_LOSSES.register("qfl", types={"beta": NonNegative}, soft_targets=True)(quality_focal_loss)  # the GFL joint score

BOX_LOSSES.register("smooth_l1", types={"beta": NonNegative})(smooth_l1_loss)
BOX_LOSSES.register("l1")(l1_loss)

SOFTMAX_LOSSES.register("softmax_ce")(softmax_ce_loss)  # Fast R-CNN eq. 1: -log p_u over K + 1 classes


def build_loss(registry: Registry, name: str, params: Dict[str, Any], context: Dict[str, Any]) -> Callable:
    """The loss ``name`` with its study params bound (after the entry's ``prepare``)."""
    entry = registry.entry(name)
    prepare = entry.meta.get("prepare")
    params = prepare(dict(params), context) if prepare else dict(params)
    return functools.partial(entry.fn, **params)
