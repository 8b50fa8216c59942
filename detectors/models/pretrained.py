"""Pretrained backbone weights: read a state dict, check it, load it into a detector, freeze what the
fine-tuning conventions freeze.

Every paper in scope fine-tunes an ImageNet-pretrained classification network.
Here the weights come from a file: at ``paper`` scale exactly what torchvision's
``resnet50().state_dict()`` (or ``vgg16()``'s, for SSD) saves, at ``tiny`` scale
the state dict of :class:`detectors.models.backbones.TinyBody` that the
platform's pretraining stage writes (``detectors.train.pretrain``). A file's
architecture is read from its keys; its classifier (``fc.*``, ``classifier.*``)
is not used.

A detector's backbone body is found by its parameters, not by a list per
detector: every module of the model whose state-dict keys are keys of the
architecture's network (same shapes) and include its first stage is a body
(``backbone.body.body`` in RetinaNet, and both ``backbone.body.body`` and
``rpn_backbone.body.body`` in Faster R-CNN's alternating training, whose steps 1
and 2 start from separate copies). A body may stop early (a single-level
backbone has no last stage): it takes the keys it has.

Fine-tuning, as torchvision's ``trainable_backbone_layers`` and Detectron2's
``FREEZE_AT``: ``freeze_at = k`` freezes the body's first ``k`` stages (ResNet:
the stem, then ``layer1`` ...; the tiny body: ``layer1`` ...); their parameters
are recorded in ``model.frozen_parameters``, which every training phase leaves
frozen (``detectors.train.phases.apply_phase``). ``norm="frozen"`` replaces each
batch norm of the body by torchvision's ``FrozenBatchNorm2d`` (statistics and
affine parameters fixed, as both libraries do with a pretrained ResNet).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["ARCHS", "read_weights", "architecture", "check_weights", "find_bodies", "load_backbone", "frozen_names"]

# Each architecture: the classification network whose weights a file holds (its state dict, minus the
# classifier), how a file's keys map onto it, and its stages, first to last, as key prefixes.
ARCHS = ("tiny", "resnet50", "vgg16")
_STAGES: Dict[str, List[Tuple[str, ...]]] = {
    "tiny": [("layer1",), ("layer2",), ("layer3",), ("layer4",), ("layer5",)],
    "resnet50": [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)],
    # VGG-16's five conv blocks (torchvision's ``features`` indices of their convs)
    "vgg16": [("0", "2"), ("5", "7"), ("10", "12", "14"), ("17", "19", "21"), ("24", "26", "28")],
}
_CLASSIFIER = ("fc.", "classifier.")


def reference(arch: str) -> nn.Module:
    """The architecture's network, randomly initialised (its keys and shapes are what a file must hold)."""
    from torchvision.models import resnet50, vgg16

    from detectors.models.backbones import TINY_WIDTHS, TinyBody

    with torch.device("meta"):
        if arch == "tiny":
            return TinyBody(TINY_WIDTHS)
        if arch == "resnet50":
            return resnet50(weights=None)
        return vgg16(weights=None).features


def read_weights(path: str) -> Dict[str, Tensor]:
    """The state dict in ``path`` (tensors only; memory-mapped, so a 100 MB file costs little to check)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("not a state dict (a mapping of parameter names to tensors)")
    return state


def architecture(state: Dict[str, Tensor]) -> Tuple[str, Dict[str, Tensor]]:
    """The file's architecture and its state dict in the reference network's keys (classifier dropped)."""
    keys = set(state)
    if any(k.startswith("features.") for k in keys):
        return "vgg16", {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    kept = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER)}
    if "conv1.weight" in keys:
        return "resnet50", kept
    if any(k.startswith("layer5.") for k in keys):
        return "tiny", kept
    raise ValueError("neither a ResNet-50, a VGG-16 nor the tiny body's state dict "
                     f"(its first keys: {', '.join(sorted(keys)[:3])})")


def check_weights(state: Dict[str, Tensor]) -> Tuple[str, Dict[str, Tensor]]:
    """The architecture and its weights, once every key and shape is the reference network's;
    raises ValueError naming the first missing or unexpected key, or the first shape that differs."""
    arch, weights = architecture(state)
    expected = {k: tuple(v.shape) for k, v in reference(arch).state_dict().items() if not k.startswith(_CLASSIFIER)}
    for key in sorted(expected):
        if key not in weights and not key.endswith("num_batches_tracked"):
            raise ValueError(f"a {arch} state dict without '{key}'")
    for key in sorted(weights):
        if key not in expected:
            raise ValueError(f"unexpected key '{key}' for a {arch} state dict")
        if tuple(weights[key].shape) != expected[key]:
            raise ValueError(f"'{key}' has shape {list(weights[key].shape)}; {arch} expects {list(expected[key])}")
    return arch, weights


def find_bodies(model: nn.Module, arch: str) -> List[str]:
    """Prefixes (``"backbone.body.body."``) of the outermost modules of ``model`` that are a body of
    ``arch``: every state-dict key theirs, with its shape, and the first stage among them."""
    expected = {k: tuple(v.shape) for k, v in reference(arch).state_dict().items()}
    stem = _STAGES[arch][0]
    found: List[str] = []
    for name, module in model.named_modules():
        if any(name == f[:-1] or name.startswith(f) for f in found):
            continue  # inside a body already found
        own = module.state_dict()
        if not own or not any(k.split(".")[0] in stem for k in own):
            continue
        if all(expected.get(k) == tuple(v.shape) for k, v in own.items() if not k.endswith("num_batches_tracked")):
            found.append(f"{name}." if name else "")
    return found


def load_backbone(model: nn.Module, state: Dict[str, Tensor], freeze_at: int, norm: str) -> List[str]:
    """Load the file's weights into every body of ``model``, freeze its first ``freeze_at`` stages,
    and (``norm="frozen"``) fix its batch norms. Returns the bodies' prefixes; raises ValueError
    when the model has no body of the file's architecture."""
    arch, weights = check_weights(state)
    prefixes = find_bodies(model, arch)
    if not prefixes:
        raise ValueError(f"the weights are a {arch} backbone's; this detector has no {arch} backbone "
                         f"(tiny scale takes the tiny body's weights, paper scale ResNet-50's or SSD's VGG-16's)")
    frozen: List[str] = list(getattr(model, "frozen_parameters", ()))
    for prefix in prefixes:
        body = model.get_submodule(prefix[:-1]) if prefix else model
        own = body.state_dict()
        body.load_state_dict({k: weights[k].to(own[k].dtype) for k in own if k in weights}, strict=False)
        stages = [p for stage in _STAGES[arch][:freeze_at] for p in stage]
        for name, param in body.named_parameters():
            if name.split(".")[0] in stages:
                param.requires_grad_(False)
                frozen.append(prefix + name)
        if norm == "frozen":
            _freeze_batch_norm(body)
    model.frozen_parameters = tuple(frozen)
    return prefixes


def _freeze_batch_norm(module: nn.Module) -> None:
    """Every ``BatchNorm2d`` under ``module`` becomes a ``FrozenBatchNorm2d`` with its statistics and affine
    parameters (buffers now: no optimizer moves them, no forward updates them)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm(child)


def frozen_names(model: nn.Module) -> Sequence[str]:
    """Parameters no phase trains (the pretrained backbone's frozen stages); empty for most models."""
    return getattr(model, "frozen_parameters", ())
