"""The detector registry and the contract every detector declares when it registers.

    @register_detector("retinanet", roles={"cls": LossRole(CLS_LOSSES, "focal"), ...},
                       losses=("loss_cls", "loss_box"))
    def build_retinanet(num_classes: int, scale: str = "tiny", cls_loss=None, box_loss=None, ...): ...

A detector declares:

- its study-facing parameters: the builder's keyword parameters with defaults,
  typed (``Annotated`` ranges, ``Literal`` choices), minus what the training
  code injects (``num_classes``, ``scale``, ``score_thresh``, ``nms_iou``,
  ``max_dets``, and one ``<role>_loss`` callable per loss role);
- its loss roles: which losses it takes, from which registry, with which
  default; the study's ``loss:`` section sets the ``primary`` role and
  ``losses: {role: ...}`` any role;
- the loss names its forward returns in train mode (all it can return, and
  optionally ``active(params)``: those it returns for given params); the
  training loop weights them by these names;
- optionally the default weights of its losses (``loss_weights``, by name
  without ``loss_``) where its paper's loss is a weighted sum of the terms it
  returns (YOLOv1: box 5, noobj 0.5); ``train.loss_weights`` overrides them,
  and a loss named in neither weighs 1;
- optionally ``check(params)`` for combinations of parameters and
  ``check_losses(params, loss_names)`` for combinations with its losses
  (raising ``ValueError``), and ``phases(params, train)``: the training phases
  of a scheme it implements (see ``detectors.train.phases``).

``detectors.build`` reads these declarations; the driver asks it, never a list of its own.
The detector modules import this module to register; everyone else imports ``MODELS``
from ``detectors.models``, which imports every detector module first.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from detectors.registry import Registry

# What the training code fills (never set from a study file's detector params).
INJECTED = ("num_classes", "scale", "score_thresh", "nms_iou", "max_dets")

MODELS = Registry("detector", injected=INJECTED)


@dataclass(frozen=True)
class LossRole:
    """One loss a detector takes: the registry its name comes from and its default.

    ``default`` None: the builder picks (its choice may depend on other params);
    ``params`` are the default loss's parameters when the study names none.
    """

    registry: Registry
    default: Optional[str] = None
    params: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


def register_detector(name: str, *, roles: Mapping[str, LossRole], losses: Sequence[str], primary: str = "cls",
                      active: Optional[Callable[[Dict[str, Any]], Sequence[str]]] = None,
                      check: Optional[Callable[[Dict[str, Any]], None]] = None,
                      check_losses: Optional[Callable[[Dict[str, Any], Dict[str, str]], None]] = None,
                      phases: Optional[Callable[[Dict[str, Any], Dict[str, Any]], list]] = None,
                      loss_weights: Optional[Mapping[str, float]] = None):
    """Register a detector builder with its contract (see the module docstring)."""
    if primary not in roles:
        raise ValueError(f"detector '{name}': primary loss role '{primary}' is not among its roles {sorted(roles)}")
    if any(not n.startswith("loss_") for n in losses):
        raise ValueError(f"detector '{name}': loss names start with 'loss_', got {list(losses)}")
    unknown = set(loss_weights or {}) - {n.removeprefix("loss_") for n in losses}
    if unknown:
        raise ValueError(f"detector '{name}': default loss weights for losses it does not return: {sorted(unknown)}")
    return MODELS.register(name, hidden=tuple(f"{r}_loss" for r in roles), check=check, roles=dict(roles),
                           losses=tuple(losses), primary=primary, active=active, check_losses=check_losses,
                           phases=phases, loss_weights=dict(loss_weights or {}))

