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


def area_weights(n_old: int, n_new: int) -> np.ndarray:
    """(n_new, n_old) float32: new voxel i as the exact volume-weighted mean of the old voxels it
    overlaps (a thick slice). Plain numpy, so it is also safe in forked augmentation workers."""
    old, new = np.arange(n_old + 1) / n_old, np.arange(n_new + 1) / n_new
    overlap = np.minimum(new[1:, None], old[None, 1:]) - np.maximum(new[:-1, None], old[None, :-1])
    overlap = np.clip(overlap, 0.0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def linear_weights(n_old: int, n_new: int) -> np.ndarray:
    """(n_new, n_old) float32: linear interpolation with voxel corners aligned (as ``F.interpolate``
    with align_corners=False, which the preprocessing uses to upsample)."""
    x = np.clip((np.arange(n_new) + 0.5) * n_old / n_new - 0.5, 0.0, n_old - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_old - 1)
    weights = np.zeros((n_new, n_old), np.float32)
    np.add.at(weights, (np.arange(n_new), lo), 1.0 - (x - lo))
    np.add.at(weights, (np.arange(n_new), hi), x - lo)
    return weights


def along_axis(array: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """``matrix`` (new, old) applied along ``axis`` of ``array``."""
    return np.moveaxis(np.tensordot(matrix, array, axes=(1, axis)), 0, axis)


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


def resampled_argmax(channels: np.ndarray | None, values: list[int], new_shape, separate_axis: int | None = None,
                     channel_of=None, on_channel=None) -> np.ndarray:
    """Argmax over class channels resampled one at a time to ``new_shape`` (peak: two float volumes).

    Channel k (``channels[k]``, or ``channel_of(k)`` when given) stands for ``values[k]``; ties go to
    the earlier class. ``on_channel(k, resampled)`` sees each resampled channel (to keep probabilities).
    Returns int16 labels. The running maximum is kept in torch: multi-threaded, unlike numpy's masking.
    """
    new_shape = [int(s) for s in new_shape]
    best = torch.full(new_shape, -1.0)
    region = torch.zeros(new_shape, dtype=torch.int16)
    for k, value in enumerate(values):
        source = channel_of(k) if channel_of is not None else channels[k : k + 1]
        channel = torch.from_numpy(resample_channels(source, new_shape, separate_axis)[0])
        region.masked_fill_(channel > best, value)
        torch.maximum(best, channel, out=best)
        if on_channel is not None:
            on_channel(k, channel)
    return region.numpy()


def resample_labels(seg: np.ndarray, new_shape, labels: list[int], separate_axis: int | None = None) -> np.ndarray:
    """Resample an integer label map (Z, Y, X) via one-hot channels; returns the input's dtype."""
    if list(seg.shape) == [int(s) for s in new_shape]:
        return seg
    values = sorted(set(labels) | {0})
    one_hot = lambda k: (seg == values[k])[None].astype(np.float32)  # noqa: E731
    return resampled_argmax(None, values, new_shape, separate_axis, channel_of=one_hot).astype(seg.dtype)
