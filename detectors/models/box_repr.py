"""Box representations of the dense detector (GFL, arXiv 2006.04388, Table 2a), as injected parts.

Each predicts the four side distances ``l, t, r, b`` from a location, in
stride units, from ``channels`` raw outputs per location:

- ``DiracBox``: the distances directly (FCOS, ATSS); ReLU keeps them >= 0.
- ``GaussianBox``: 4 means + 4 log-variances, trained with a Gaussian NLL
  (``loss_nll``) on top of the detector's GIoU.
- ``GeneralBox``: a discrete distribution over bins ``0, Delta, ..., n Delta``
  per side, its expectation the distance (GFL eq. 4); with ``dfl=True`` the
  Distribution Focal Loss (``loss_dfl``, GFL eq. 6) pulls the mass onto the two
  bins around the target.

A representation knows its channel count, how raw outputs become distances,
how to initialise the head's output bias, and its own extra losses (names in
``loss_names``), so the detector needs no switch on its name.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors.losses.gfl import distribution_focal_loss, gaussian_nll_loss, integral

# Bound on the Gaussian log-variance: exp(-a) in the NLL overflows float32 below
# about -88, and an untrained head can get there; e^10 covers any sensible spread.
LOG_VAR_BOUND = 10.0


class DiracBox:
    """Side distances regressed directly."""

    name = "dirac"
    channels = 4
    loss_names: Tuple[str, ...] = ()

    def distances(self, raw: Tensor) -> Tensor:
        """Raw box outputs ``[M, C]`` -> side distances ``[M, 4]`` in stride units."""
        return F.relu(raw[:, :4])

    def init_bias(self, bias: Tensor, side: float) -> None:
        """Start every prediction at the anchor box (``side`` strides from the centre): at
        zero-size boxes GIoU has no gradient to grow them."""
        with torch.no_grad():
            bias[:4] = side

    def losses(self, raw: Tensor, dist: Tensor, target_dist: Tensor, weight: Tensor, norm: Tensor
               ) -> Dict[str, Tensor]:
        """Extra losses over the P positives: ``raw`` [P, C], ``dist`` / ``target_dist`` [P, 4]
        (stride units), per-positive ``weight`` [P] and its sum ``norm``."""
        return {}


class GaussianBox(DiracBox):
    """Gaussian per side: the mean is the distance, the log-variance its uncertainty."""

    name = "gaussian"
    channels = 8
    loss_names = ("loss_nll",)

    @staticmethod
    def log_var(raw: Tensor) -> Tensor:
        """The log-variances ``[M, 4]``, bounded (see ``LOG_VAR_BOUND``)."""
        return raw[:, 4:8].clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND)

    def losses(self, raw, dist, target_dist, weight, norm):
        nll = gaussian_nll_loss(dist, self.log_var(raw), target_dist)
        return {"loss_nll": (weight * nll.mean(1)).sum() / norm}


class GeneralBox:
    """General distribution over ``reg_max + 1`` bins of width ``bin_width`` (stride units)."""

    def __init__(self, reg_max: int = 16, bin_width: float = 1.0, dfl: bool = True) -> None:
        if reg_max < 1 or bin_width <= 0:
            raise ValueError(f"need reg_max >= 1 and bin_width > 0, got {reg_max}, {bin_width}")
        self.reg_max, self.bin_width, self.dfl = reg_max, bin_width, dfl
        self.name = "general_dfl" if dfl else "general"
        self.channels = 4 * (reg_max + 1)
        self.loss_names = ("loss_dfl",) if dfl else ()

    def distances(self, raw: Tensor) -> Tensor:
        return integral(raw.reshape(-1, 4, self.reg_max + 1), self.bin_width)

    def init_bias(self, bias: Tensor, side: float) -> None:
        """Zero logits: a uniform distribution, whose expectation is mid-range."""

    def losses(self, raw, dist, target_dist, weight, norm):
        if not self.dfl:
            return {}
        bins = (target_dist / self.bin_width).clamp(0, self.reg_max)
        dfl = distribution_focal_loss(raw.reshape(-1, self.reg_max + 1), bins.flatten())
        return {"loss_dfl": (weight * dfl.view(-1, 4).mean(1)).sum() / norm}


BOX_REPRESENTATIONS = ("dirac", "gaussian", "general", "general_dfl")


def make_box_representation(name: str, reg_max: int = 16, bin_width: float = 1.0):
    """The representation called ``name`` in study files (``reg_max`` / ``bin_width``: general only)."""
    if name == "dirac":
        return DiracBox()
    if name == "gaussian":
        return GaussianBox()
    if name in ("general", "general_dfl"):
        return GeneralBox(reg_max, bin_width, dfl=name == "general_dfl")
    raise ValueError(f"unknown box representation '{name}' (known: {', '.join(BOX_REPRESENTATIONS)})")
