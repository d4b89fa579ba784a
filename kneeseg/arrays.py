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


def sampled_centre(mask: np.ndarray, samples: int = 128) -> np.ndarray:
    """Centre (z, y, x voxel index) of a non-empty mask, from every few voxels (about ``samples`` along
    each axis; bones lie centimetres apart, and a 0.35 mm scan's full grid took seconds); from every
    voxel where the sample misses the mask (a bone smaller than the strides)."""
    strides = np.array([max(1, n // samples) for n in mask.shape])
    few = np.argwhere(mask[tuple(slice(None, None, s) for s in strides)])
    return few.mean(0) * strides if len(few) else np.argwhere(mask).mean(0)


def faces(array: np.ndarray) -> list[np.ndarray]:
    """The array's outermost slices, first and last along each axis (a 3D image's six faces): where
    what reaches the edge of the field of view shows."""
    return [np.take(array, end, axis=axis) for axis in range(array.ndim) for end in (0, -1)]
