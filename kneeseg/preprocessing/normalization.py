"""Intensity normalisation named in the plans (per channel): "zscore" or "rank".

"rank" maps each scan's intensities through its own distribution onto a standard normal one (each
intensity becomes the normal score of its mid-rank among the scan's voxels, the rank-based inverse
normal transform). Every monotonic change of contrast (another TR/TE, gamma, a scanner's own
intensity scaling) then gives the same normalised image, and an inverted contrast gives its negative,
which the predictor's inverted reading undoes exactly. It is tabulated on a strided sample of the
original voxels and applied to them before resampling: applied after it, the averages that the
resampling takes across edges (partial volume) would move with the contrast.

Z-score is affine, and the resampling that follows it (area averaging, linear interpolation) is a
weighted mean with weights summing to one, so the two commute. ``normalize_and_resample`` therefore
measures mean and std on the original voxels (as nnU-Net does) but applies them after resampling,
to ~40x fewer voxels on a 0.35 mm scan planned at 1 mm. With the nonzero mask (voxels outside it are
zero, and become zero) the normalised image is x/std - mean/std * mask: still linear, in the image
and in the mask, so the resampled mask carries the offset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.special import ndtri

from kneeseg.errors import KneesegError
from kneeseg.planning.plans import NORMALIZATIONS

KNOWN_SCHEMES = NORMALIZATIONS
RANK_SAMPLES = 2**20  # voxels the rank table is measured on (a strided sample: the same every run)
RANK_LEVELS = 2048  # points of the tabulated curve; finer steps change the normalised image by < 1e-3


def check_schemes(schemes: list[str]) -> None:
    for scheme in schemes:
        if scheme not in KNOWN_SCHEMES:
            raise KneesegError(f"normalisation '{scheme}' is not known (known: {', '.join(KNOWN_SCHEMES)})")


def zscore(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Z-score of one image (float32, a new array); with a mask, statistics come from inside it and
    outside becomes 0. The definition that ``normalize_and_resample`` computes in the other order.

    MRI intensities have no absolute scale, so each scan is normalised on its own (nnU-Net's rule).
    """
    x = np.asarray(image, np.float64)
    inside = mask if mask is not None and mask.any() else np.ones(x.shape, bool)
    mean, std = x[inside].mean(), x[inside].std()
    return np.where(inside, (x - mean) / max(std, 1e-8), 0.0).astype(np.float32)


def rank_table(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intensities, scores): increasing points of the curve that takes ``values`` (a 1D sample of a
    scan's voxels) to the standard normal score of their mid-rank. Tied values share one point, so a
    scan stored in few grey levels keeps them distinct and in order; mid-ranks make the table of the
    inverted sample the negated mirror of this one."""
    values, counts = np.unique(np.asarray(values, np.float64), return_counts=True)
    if values.size < 2:  # a constant image (or none): every voxel at the median, 0
        start = float(values[0]) if values.size else 0.0
        return np.array([start, start + 1.0]), np.zeros(2)
    rank = (np.cumsum(counts) - counts / 2) / counts.sum()  # mid-rank share, strictly inside (0, 1)
    if values.size > RANK_LEVELS:  # points evenly spaced in rank, both ends kept
        near = np.searchsorted(rank, np.linspace(rank[0], rank[-1], RANK_LEVELS)).clip(0, values.size - 1)
        keep = np.unique(np.r_[0, near, values.size - 1])
        values, rank = values[keep], rank[keep]
    return values, ndtri(rank)


def rank_normalize(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Rank normalisation of one image (float32, a new array), tabulated on every voxel inside ``mask``
    (outside becomes 0): the definition that ``normalize_and_resample`` computes on a sample."""
    x = np.asarray(image, np.float64)
    inside = mask if mask is not None and mask.any() else np.ones(x.shape, bool)
    points, scores = rank_table(x[inside])
    return np.where(inside, np.interp(x, points, scores), 0.0).astype(np.float32)


def _sample(x: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """About RANK_SAMPLES of ``x``'s voxels (inside ``inside`` where given), every k-th in memory order."""
    n = int(np.count_nonzero(inside)) if inside is not None else x.size
    step = max(1, n // RANK_SAMPLES)
    flat = x.reshape(-1)
    if inside is None:
        return flat[::step]
    if step == 1:
        return flat[inside.reshape(-1)]
    where = np.flatnonzero(inside.reshape(-1))[::step]
    return flat[where]


def _sum64(x: torch.Tensor) -> float:
    """Sum of a float32 volume: rows in float32 (multi-threaded, short enough to stay exact to ~1e-7),
    the row sums in float64. A float64 reduction over the whole volume is ~5x slower on 10^8 voxels."""
    return float(x.reshape(-1, x.shape[-1]).sum(1).double().sum())


def normalize_and_resample(data: np.ndarray, schemes: list[str], use_mask: list[bool],
                           resample: Callable[[np.ndarray], np.ndarray], inside: np.ndarray | None = None) -> np.ndarray:
    """``resample`` of the normalised (C, Z, Y, X) float32 data, channel c by ``schemes[c]`` inside
    the nonzero mask when ``use_mask[c]``; ``resample`` must be linear with weights summing to one
    (the plans' resampling). ``inside``: the nonzero mask (any channel), when the caller has it already."""
    check_schemes(schemes)
    volume = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if any(use_mask) and inside is None:
        inside = (volume != 0).any(0).numpy()
    n_inside = int(np.count_nonzero(inside)) if inside is not None and any(use_mask) else 0
    offsets = {}  # z-score channel -> (mean, std, masked), measured on the original voxels
    tables = {}  # rank channel -> its table, measured on the original voxels
    for c, masked in enumerate(use_mask):
        x = volume[c]
        if schemes[c] == "rank":
            tables[c] = rank_table(_sample(x.numpy(), inside if masked and n_inside else None))
        elif masked and n_inside:  # outside the mask x is 0, so sums over everything are sums inside it
            mean = _sum64(x) / n_inside
            std = max(_sum64(x.square()) / n_inside - mean * mean, 0.0) ** 0.5
            offsets[c] = (mean, max(std, 1e-8), True)
        else:  # multi-threaded and numerically stable in float32 (10^8 voxels at prediction time)
            var_t, mean_t = torch.var_mean(x, correction=0)
            offsets[c] = (float(mean_t), max(float(var_t) ** 0.5, 1e-8), False)
    if tables and np.shares_memory(volume.numpy(), data):
        volume = volume.clone()  # the caller's array stays as it was
    for c, (points, scores) in tables.items():
        _apply_rank(volume[c], points, scores, torch.from_numpy(inside) if use_mask[c] and n_inside else None)
    mask_after = torch.zeros(())
    if any(masked for _, _, masked in offsets.values()):
        mask_after = torch.from_numpy(resample(torch.from_numpy(inside)[None].float().numpy())[0])
    out = torch.from_numpy(resample(volume.numpy()))  # may be ``data`` itself when no axis changes: stats are taken
    for c, (mean, std, masked) in offsets.items():
        if masked:
            out[c].sub_(mask_after, alpha=mean).div_(std)
        else:
            out[c].sub_(mean).div_(std)
    return out.numpy()


RANK_CHUNK = 2**22  # voxels mapped at a time: bounded index memory on a 10^8-voxel scan
RANK_LUT_SIZE = 2**16  # integer intensities over at most this range go through a lookup table


def _apply_rank(x: torch.Tensor, points: np.ndarray, scores: np.ndarray, inside: torch.Tensor | None) -> None:
    """``x`` (a float32 channel) through the rank table, in place; with ``inside``, voxels outside it
    become 0. Piecewise-linear between the table's points, flat beyond its ends (np.interp's rule).
    Scanners store integers: a chunk of whole numbers within the table's range of RANK_LUT_SIZE is
    looked up in the curve evaluated at every integer instead of searched in the table."""
    lo, hi = float(points[0]), float(points[-1])
    lut = None
    if lo.is_integer() and hi - lo < RANK_LUT_SIZE:
        lut = torch.from_numpy(np.interp(np.arange(lo, hi + 1), points, scores).astype(np.float32))
    xp = torch.from_numpy(points.astype(np.float32))
    yp = torch.from_numpy(scores.astype(np.float32))
    slope = (yp[1:] - yp[:-1]) / (xp[1:] - xp[:-1]).clamp_min(1e-30)
    flat = x.view(-1)
    keep = None if inside is None else inside.reshape(-1)
    for start in range(0, flat.numel(), RANK_CHUNK):
        part = flat[start:start + RANK_CHUNK]
        clamped = part.clamp(lo, hi)
        if lut is not None and torch.equal(clamped, clamped.round()):
            mapped = lut[clamped.sub_(lo).long()]
        else:
            i = (torch.searchsorted(xp, part, right=True) - 1).clamp_(0, len(xp) - 2)
            mapped = yp[i].add_(slope[i] * (clamped - xp[i]))
        if keep is not None:
            mapped.mul_(keep[start:start + RANK_CHUNK])
        part.copy_(mapped)
