"""Checkpoints: written atomically (temporary name + rename), read with a clear error when broken."""

from __future__ import annotations

from pathlib import Path

import torch

from kneeseg.errors import KneesegError
from kneeseg.io import atomic_path


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise KneesegError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise KneesegError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "network" not in state:
        raise KneesegError(f"{path}: not a kneeseg checkpoint")
    return state
