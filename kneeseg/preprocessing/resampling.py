"""Resampling between voxel grids, in torch (fast, multi-threaded on the CPU).

- Downsampling an axis averages the source voxels that fall in each target voxel (area
  interpolation: antialiased, so thin-slice noise does not alias into the coarse grid);
  upsampling interpolates linearly. Corners are not aligned: the volume's physical extent is kept.
- Labels are resampled as one-hot channels, one class at a time, and the class with the largest
  value wins; peak memory stays at two float arrays of the larger grid.
- ``separate_axis`` (anisotropic data): resample in-plane first, then take the nearest slice along
  that axis, so that thick slices are not smeared into each other.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def target_shape(shape, old_spacing, new_spacing) -> list[int]:
    return [max(1, int(round(n * o / s))) for n, o, s in zip(shape, old_spacing, new_spacing)]


def _interpolate(volume: torch.Tensor, size: list[int]) -> torch.Tensor:
    """(N, C, *spatial) -> resized; area when no axis grows, else linear."""
    spatial = list(volume.shape[2:])
    if list(size) == spatial:
        return volume
    if all(s <= o for s, o in zip(size, spatial)):
        pool = F.adaptive_avg_pool3d if volume.ndim == 5 else F.adaptive_avg_pool2d
        return pool(volume, size)
    if any(s < o for s, o in zip(size, spatial)):  # mixed: shrink with area, then grow linearly
        volume = _interpolate(volume, [min(s, o) for s, o in zip(size, spatial)])
    mode = "trilinear" if volume.ndim == 5 else "bilinear"
    return F.interpolate(volume, size=list(size), mode=mode, align_corners=False)


def _nearest_along(volume: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    old = volume.shape[axis]
    index = torch.clamp(((torch.arange(size) + 0.5) * old / size).long(), max=old - 1)
    return volume.index_select(axis, index)


def resample_channels(data: np.ndarray, new_shape, separate_axis: int | None = None) -> np.ndarray:
    """Resample (C, Z, Y, X) float data to ``new_shape`` (Z, Y, X); returns float32."""
    new_shape = [int(s) for s in new_shape]
    if list(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    out = np.empty((data.shape[0], *new_shape), np.float32)
    with torch.no_grad():
        for c in range(data.shape[0]):
            volume = torch.from_numpy(np.ascontiguousarray(data[c], dtype=np.float32))
            if separate_axis is None:
                result = _interpolate(volume[None, None], new_shape)[0, 0]
            else:
                # In-plane: the separate axis becomes the batch; then nearest slice along it.
                moved = volume.movedim(separate_axis, 0)[:, None]
                plane = [s for a, s in enumerate(new_shape) if a != separate_axis]
                moved = _interpolate(moved, plane)[:, 0].movedim(0, separate_axis)
                result = _nearest_along(moved, separate_axis, new_shape[separate_axis])
            out[c] = result.numpy()
    return out


def resample_labels(seg: np.ndarray, new_shape, labels: list[int], separate_axis: int | None = None) -> np.ndarray:
    """Resample an integer label map (Z, Y, X) via one-hot channels; returns the input's dtype."""
    new_shape = [int(s) for s in new_shape]
    if list(seg.shape) == new_shape:
        return seg
    best = np.full(new_shape, -1.0, np.float32)
    out = np.zeros(new_shape, seg.dtype)
    for value in sorted(set(labels) | {0}):
        channel = resample_channels((seg == value)[None].astype(np.float32), new_shape, separate_axis)[0]
        better = channel > best
        out[better] = value
        best[better] = channel[better]
    return out
