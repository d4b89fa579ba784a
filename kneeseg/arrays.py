"""Small array helpers every stage may use (numpy only: they also run in forked augmentation
workers, where torch's thread pool can deadlock)."""

from __future__ import annotations

import numpy as np


def bbox_slices(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of a mask's nonzero voxels widened by ``margin`` (clipped to the
    array; the whole array when the mask is empty): where morphology and surface distances on one
    bone need to look in a whole scan."""
    box = []
    for axis, n in enumerate(mask.shape):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = (int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, n)
        box.append(slice(max(0, lo - margin), min(n, hi + margin)))
    return tuple(box)
