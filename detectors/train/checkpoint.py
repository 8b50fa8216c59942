"""Epoch checkpoints: everything a resumed trial needs to continue bit-identically.

A checkpoint holds the model, optimizer and scheduler state, where training
stands (phase index, epoch within the phase, global epoch and optimiser step),
every RNG state, and ``extra`` bookkeeping (train time, images seen). It is
written to a temporary file and renamed, so a crash never leaves half of one.
Checkpoints load with ``weights_only=True``.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            # numpy's state holds an ndarray; stored as a tensor so weights_only loading accepts it
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def save_checkpoint(path: str, model, optimizer, scheduler, position: dict, extra: dict) -> str:
    """Write ``path/state.pt``; ``position`` holds ``phase``, ``phase_epoch``, ``phase_step``,
    ``epoch`` (global) and ``step`` (global)."""
    os.makedirs(path, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), **position, "rng": rng_state(), "extra": extra}
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(path, STATE_FILE))  # never a half-written checkpoint
    return path


def load_checkpoint(path: str) -> dict:
    """The state dict of ``path/state.pt``; checkpoints from before phases read as phase 0."""
    state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
    state.setdefault("phase", 0)
    state.setdefault("phase_epoch", state["epoch"])
    state.setdefault("phase_step", state["step"])
    return state
