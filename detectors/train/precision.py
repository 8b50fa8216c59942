"""Numeric precision of training and inference: ``train.precision`` fp32 | bf16 | fp16.

    with autocast(device, "bf16"):
        losses = model(images, targets)
    scaler = grad_scaler(device, "fp16")   # a no-op scaler unless fp16

Mixed precision as torch's automatic mixed precision does it (``torch.autocast``):
the parameters and the optimiser stay float32, matmuls and convolutions run in
the low-precision type, reductions and losses that need the range in float32.
fp16 has a narrow exponent range, so its gradients are scaled up before backward
and unscaled before clipping and the step (``torch.amp.GradScaler``, which also
skips a step whose gradients overflowed); bf16 has float32's range and needs no
scaling. On CPU, bf16 autocast is what the hardware (AVX-512 BF16, AMX) speeds up;
fp16 is meant for CUDA.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "grad_scaler", "prepare_memory_format"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    return PRECISIONS[precision]


def autocast(device, precision: str = "fp32"):
    """A context in which the forward runs at ``precision`` (fp32: no autocast at all)."""
    dtype = _dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device, precision: str = "fp32") -> "torch.amp.GradScaler":
    """Loss scaling for fp16; for fp32 and bf16 a disabled scaler whose calls pass through
    (``scale(loss)`` is ``loss``, ``step(opt)`` is ``opt.step()``)."""
    _dtype(precision)
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def prepare_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """NHWC weights when ``channels_last`` (convolutions then run in that layout on CUDA
    and oneDNN, which is faster for tensor cores); the model unchanged otherwise."""
    return model.to(memory_format=torch.channels_last) if channels_last else model
