"""Checkpoints: written atomically (temporary name + rename), read as data, never as code.

A checkpoint may come from elsewhere (a shared model folder, a copied results folder), and an
ordinary pickle runs whatever code its author wrote into it on loading. Every checkpoint is therefore
read with torch's weights-only unpickler, which builds tensors, containers and plain values only and
refuses anything else; a file that asks for more is refused in one line naming it. What the trainer
saves is of those types, the random generators' states included (``rng_state``).

Checkpoints written by kneeseg 0.2 and earlier hold numpy's generator state as numpy's own tuple, an
ndarray inside: the numpy globals that rebuild a plain uint32 array (no code, only numbers) are
allowed as well, so that those checkpoints still predict and continue.
"""

from __future__ import annotations

import io
import pickle
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch

from kneeseg.errors import KneesegError
from kneeseg.io import atomic_path

# How an ndarray pickles itself: numpy.core.multiarray._reconstruct (numpy 1) or numpy._core.multiarray's (numpy 2).
_RECONSTRUCT = cast(Callable, np.zeros(0).__reduce__()[0])
# Named as numpy 1 and numpy 2 pickle them, so that checkpoints written under either load under both;
# of the dtypes only uint32, the generator's keys (the unpickler sets the state of allowed types only).
NUMPY_ARRAY_GLOBALS: list[Callable | tuple[Callable, str]] = [
    *((_RECONSTRUCT, f"numpy.{core}.multiarray._reconstruct") for core in ("core", "_core")),
    np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_weights_only(source: Path | io.BytesIO, where: str | Path) -> object:
    """What ``source`` holds, read with the weights-only unpickler; a KneesegError naming ``where``
    if it is unreadable or asks for anything but tensors, containers and plain values."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            named = re.search(r"GLOBAL (\S+)", str(exc))
            asked = f" ({named.group(1)})" if named else ""
            raise KneesegError(f"{where}: refused: it asks for Python objects beyond weights and plain values{asked}, "
                               "which could run code on loading; kneeseg reads checkpoints as data only") from None
        raise KneesegError(f"{where}: corrupt or unreadable checkpoint ({type(exc).__name__})") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise KneesegError(f"{where}: corrupt or unreadable checkpoint ({type(exc).__name__})") from None


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise KneesegError(f"{path}: checkpoint not found")
    state = read_weights_only(path, path)
    if not isinstance(state, dict) or "network" not in state:
        raise KneesegError(f"{path}: not a kneeseg checkpoint")
    return state


def rng_state() -> dict:
    """The torch, numpy and python random generators' states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    assert kind == "MT19937"  # the legacy global generator's only kind
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "python": random.getstate()}  # (version, tuple of ints, float or None): plain values already


def restore_rng_state(state: dict) -> None:
    """Set the generators to ``state`` (``rng_state``'s, or numpy's own tuple of an older checkpoint)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
