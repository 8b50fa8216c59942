"""Phases as data: a trial's training is a list of phases, each a plain dict.

    phases = resolve_phases(trial["train"], declared)   # [{"name": "train", "epochs": 12, ...}]
    params = apply_phase(model, phase)                   # sets requires_grad, returns what trains

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

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from detectors.registry import suggest

OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "warmup_iters", "schedule", "milestones",
                  "lr_decay")
PHASE_KEYS = ("name", "epochs", "trainable", "frozen", "losses", "kind") + OPTIMIZER_KEYS
# "sgd": minibatch steps of the loss; "fit": the model fits the phase's parameters itself, once per epoch,
# by ``model.fit_phase(phase, train_ds, device)`` (R-CNN's SVMs with hard-negative mining).
PHASE_KINDS = ("sgd", "fit")


def resolve_phases(train: Mapping[str, Any], declared: Optional[Sequence[Mapping[str, Any]]] = None
                   ) -> List[Dict[str, Any]]:
    """Complete phase dicts: the study's ``train.phases``, else ``declared``, else one phase."""
    given = train.get("phases") or declared or [{"name": "train", "epochs": train["epochs"]}]
    out = []
    for i, phase in enumerate(given):
        unknown = set(phase) - set(PHASE_KEYS)
        if unknown:
            raise ValueError(f"phase {i}: unknown keys {sorted(unknown)} (known: {', '.join(PHASE_KEYS)})")
        full = {k: train[k] for k in OPTIMIZER_KEYS if k in train}
        full.update({"name": f"phase{i}", "trainable": None, "frozen": [], "losses": None, "kind": "sgd"})
        full.update({k: v for k, v in phase.items() if v is not None})
        if full["kind"] not in PHASE_KINDS:
            raise ValueError(f"phase {i}: unknown kind '{full['kind']}' (known: {', '.join(PHASE_KINDS)})")
        out.append(full)
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def unknown_prefix(prefix: str, names: Sequence[str]) -> str:
    """"'x' names no parameters ..." with the model's prefixes of as many parts as ``prefix``."""
    depth = prefix.count(".") + 1
    level = sorted({".".join(n.split(".")[:depth]) for n in names if n.count(".") >= depth - 1})
    shown = ", ".join(level[:8]) + (", ..." if len(level) > 8 else "")
    return f"'{prefix}' names no parameters of the model{suggest(prefix, level)} (at that depth: {shown})"


def apply_phase(model: nn.Module, phase: Mapping[str, Any]) -> List[nn.Parameter]:
    """Set ``requires_grad`` per the phase's ``trainable`` / ``frozen`` prefixes; returns the
    trainable parameters. A prefix that names no parameter is an error (a typo would
    otherwise silently train everything)."""
    names = [n for n, _ in model.named_parameters()]
    trainable, frozen = phase.get("trainable"), phase.get("frozen") or []
    for prefix in list(trainable or []) + list(frozen):
        if not any(_matches(n, prefix) for n in names):
            raise ValueError(f"phase '{phase['name']}': {unknown_prefix(prefix, names)}")
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_((trainable is None or any(_matches(name, t) for t in trainable))
                         and not any(_matches(name, f) for f in frozen))
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


def counts(loss_name: str, phase: Mapping[str, Any]) -> bool:
    """Whether ``loss_name`` (``loss_*``) counts towards the phase's total loss."""
    wanted = phase.get("losses")
    return wanted is None or loss_name.removeprefix("loss_") in wanted


def build_optimizer(params, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               weight_decay=cfg.get("weight_decay", 1e-4))
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 1e-4))
    raise ValueError(f"unknown optimizer '{cfg['optimizer']}'")


def lr_factor(step: int, total: int, cfg: Mapping[str, Any]) -> float:
    """Linear warm-up from 0.1% to 100%, then cosine to 0, or (multistep) times ``lr_decay``
    at each of ``milestones`` (fractions of ``total``)."""
    warmup = cfg.get("warmup_iters", 0)
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    schedule = cfg.get("schedule", "cosine")
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "multistep":
        passed = sum(step >= m * total for m in cfg.get("milestones", [0.67, 0.89]))
        return cfg.get("lr_decay", 0.1) ** passed
    return 1.0


def phase_steps(phase: Mapping[str, Any], steps_per_epoch: int, max_steps: Optional[int]) -> int:
    """Optimiser steps the phase runs: its epochs, capped by ``train.max_steps`` (per phase)."""
    total = phase["epochs"] * steps_per_epoch
    return min(total, max_steps) if max_steps else total


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, cfg: Mapping[str, Any]):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))
