"""Which floating-point precision a run trains in (hparam ``mixed_precision``), and the autocast / gradient scaler
that go with it.

- ``auto``: bf16 autocast on a GPU that computes bf16 natively (NVIDIA compute capability 8.0 and newer: A100, H100,
  L4, RTX 30xx/40xx; AMD GPUs under ROCm), float32 elsewhere (CPU, V100, T4, P100). On pre-Ampere GPUs older torch
  releases refuse bf16 autocast and newer ones emulate it slowly; fp16 needs loss scaling and may skip steps, which
  changes how a run trains, so ``auto`` never picks it: ask for it.
- ``bf16`` / ``fp16`` / ``off``: forced. ``fp16`` comes with a gradient scaler per optimizer (torch.amp.GradScaler):
  a step whose scaled gradient overflows is skipped and the scale lowered, as torch's AMP recipe does; the run
  reports the share of skipped steps (``fp16_overflow``, ``masker_fp16_overflow``).
"""

from __future__ import annotations

import contextlib

import torch

MODES = ("auto", "bf16", "fp16", "off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: ROCm GPUs, and CUDA GPUs of compute capability >= 8.0 (the rule
    of ``torch.cuda.is_bf16_supported(including_emulation=False)``, whose argument appeared after our torch floor)."""
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve(mode: str, device: torch.device) -> str:
    """The precision ``mode`` means on ``device``: ``"bf16"``, ``"fp16"`` or ``"fp32"``."""
    if mode not in MODES:
        raise ValueError(f"mixed_precision must be one of {list(MODES)}, got {mode!r}")
    if mode == "off":
        return "fp32"
    if mode == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return mode


def autocast(precision: str, device: torch.device, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (nothing for fp32). ``cache_enabled`` False for CUDA-graph capture."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision], cache_enabled=cache_enabled)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (None otherwise)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
