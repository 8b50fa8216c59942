"""Phases as data: a trial's training is a list of phases (``detectors.config.PhaseConfig``).

    phases = resolve_phases(cfg.train, declared)   # [PhaseConfig(name="train", epochs=12, lr=..., ...)]
    params = apply_phase(model, phase)              # sets requires_grad, returns what trains

A phase names what trains and what is frozen (parameter-name prefixes, e.g.
``backbone`` or ``head.cls_subnet``), which losses count (names without the
``loss_`` prefix; the others are still computed and reported, with weight 0),
how many epochs it runs, and its optimizer settings (any of ``optimizer``,
``lr``, ``momentum``, ``weight_decay``, ``warmup_iters``, ``schedule``,
``milestones``, ``lr_decay``; unset ones come from ``train``), and its ``kind``:
``sgd`` (the default: minibatch steps) or ``fit``, a phase the model fits itself
(``model.fit_phase(phase, train_ds, device)`` once per epoch, returning figures to
report; R-CNN's SVMs with hard-negative mining), counted as one step. Each phase
gets a fresh optimizer and learning-rate schedule over its own steps; the
optimiser step and the epoch count on across phases (global).

A model may define ``begin_phase(phase, resumed)``: the training loop calls it
when a phase starts (and when a resumed trial re-enters a phase mid-way, with
``resumed=True``), e.g. to copy one part's weights into another.

A trial with no phases has one, ``train``, over every parameter and loss for
``train.epochs``: exactly the single-phase loop. A detector can declare the
phases of a scheme it implements (Faster R-CNN's 4-step alternating training,
say); a study's ``train.phases`` overrides them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from detectors.config import OPTIMIZER_KEYS, PHASE_KINDS, PhaseConfig, TrainConfig, parse
from detectors.models.pretrained import frozen_names
from detectors.registry import suggest


def resolve_phases(train: TrainConfig, declared: Optional[Sequence[Union[PhaseConfig, Mapping[str, Any]]]] = None
                   ) -> List[PhaseConfig]:
    """Complete phases: the study's ``train.phases``, else ``declared`` (a detector's scheme, as
    configs or plain dicts), else one phase ``train`` over ``train.epochs``; every optimizer
    setting a phase leaves unset (None) is ``train``'s."""
    given = train.phases or declared or [PhaseConfig(name="train", epochs=train.epochs)]
    out = []
    for i, phase in enumerate(given):
        if not isinstance(phase, PhaseConfig):
            phase = parse(PhaseConfig, phase, where=f"phase {i}")
        if phase.kind not in PHASE_KINDS:
            raise ValueError(f"phase {i}: unknown kind '{phase.kind}' (known: {', '.join(PHASE_KINDS)})")
        unset = {k: getattr(train, k) for k in OPTIMIZER_KEYS if getattr(phase, k) is None}
        out.append(dataclasses.replace(phase, **unset))
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def unknown_prefix(prefix: str, names: Sequence[str]) -> str:
    """"'x' names no parameters ..." with the model's prefixes of as many parts as ``prefix``."""
    depth = prefix.count(".") + 1
    level = sorted({".".join(n.split(".")[:depth]) for n in names if n.count(".") >= depth - 1})
    shown = ", ".join(level[:8]) + (", ..." if len(level) > 8 else "")
    return f"'{prefix}' names no parameters of the model{suggest(prefix, level)} (at that depth: {shown})"


def apply_phase(model: nn.Module, phase: PhaseConfig) -> List[nn.Parameter]:
    """Set ``requires_grad`` per the phase's ``trainable`` / ``frozen`` prefixes; returns the
    trainable parameters. A prefix that names no parameter is an error (a typo would
    otherwise silently train everything)."""
    names = [n for n, _ in model.named_parameters()]
    trainable, frozen = phase.trainable, phase.frozen
    always = set(frozen_names(model))  # a pretrained backbone's frozen stages: frozen in every phase
    for prefix in list(trainable or []) + list(frozen):
        if not any(_matches(n, prefix) for n in names):
            raise ValueError(f"phase '{phase.name}': {unknown_prefix(prefix, names)}")
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_((trainable is None or any(_matches(name, t) for t in trainable))
                         and not any(_matches(name, f) for f in frozen) and name not in always)
        if p.requires_grad:
            params.append(p)
    return params


def freeze_norm_statistics(model: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen keep their running statistics
    too (eval mode): a frozen layer computes what it computed when it was frozen."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def counts(loss_name: str, phase: PhaseConfig) -> bool:
    """Whether ``loss_name`` (``loss_*``) counts towards the phase's total loss."""
    return phase.losses is None or loss_name.removeprefix("loss_") in phase.losses


def build_optimizer(params, phase: PhaseConfig) -> torch.optim.Optimizer:
    """The phase's optimizer over ``params`` (a resolved phase: every setting filled in)."""
    if phase.optimizer == "sgd":
        return torch.optim.SGD(params, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    if phase.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    raise ValueError(f"unknown optimizer '{phase.optimizer}'")


def lr_factor(step: int, total: int, phase: PhaseConfig) -> float:
    """Linear warm-up from 0.1% to 100%, then cosine to 0, or (multistep) times ``lr_decay``
    at each of ``milestones`` (fractions of ``total``)."""
    warmup = phase.warmup_iters
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    if phase.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if phase.schedule == "multistep":
        passed = sum(step >= m * total for m in phase.milestones)
        return phase.lr_decay ** passed
    return 1.0


def phase_steps(phase: PhaseConfig, steps_per_epoch: int, max_steps: Optional[int]) -> int:
    """Optimiser steps the phase runs: its epochs, capped by ``train.max_steps`` (per phase)."""
    total = phase.epochs * steps_per_epoch
    return min(total, max_steps) if max_steps else total


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, phase: PhaseConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, phase))
