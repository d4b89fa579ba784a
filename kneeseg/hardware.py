"""What accelerator this process can use."""

from __future__ import annotations

import torch

from kneeseg.errors import KneesegError


def detect_device() -> str:
    """'cuda' if a CUDA GPU is usable, else 'mps' on Apple silicon, else 'cpu'."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(requested: str | None) -> str:
    """Validate a --device value ('auto'/None -> detected)."""
    if requested in (None, "auto"):
        return detect_device()
    kind = requested.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise KneesegError(f"--device {requested}: unknown device (use cpu, cuda, cuda:N, mps or auto)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise KneesegError(f"--device {requested}: no CUDA GPU is available to this process")
    if kind == "mps" and detect_device() != "mps":
        raise KneesegError(f"--device {requested}: MPS is not available on this machine")
    return requested


def usable_autocast(requested: str, device: str) -> str:
    """The mixed precision to use: ``requested`` if this device runs it natively, else 'none'.

    On CPUs, bf16 autocast roughly halves a U-Net step where AVX-512 BF16 or AMX exist; elsewhere it
    is emulated and slower than fp32, so it is switched off. fp16 autocast is used on CUDA only.
    """
    kind = device.split(":")[0]
    if requested == "bf16" and kind == "cpu":
        cpu = torch.cpu
        fast = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        return "bf16" if fast else "none"
    if requested == "bf16" and kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and kind != "cuda":
        return "none"
    if kind == "mps":
        return "none"
    return requested
