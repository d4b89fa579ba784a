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
