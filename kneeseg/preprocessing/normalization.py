"""Intensity normalisation named in the plans (per channel): "zscore" or "rank".

"rank" maps each scan's intensities through its own distribution onto a standard normal one (each
intensity becomes the normal score of its mid-rank among the scan's voxels, the rank-based inverse
normal transform). Every monotonic change of contrast (another TR/TE, gamma, a scanner's own
intensity scaling) then gives the same normalised image, and an inverted contrast gives its negative,
which the predictor's inverted reading undoes exactly. It is tabulated on a strided sample of the
original voxels and applied after resampling, as z-score is; a voxel the resampling mixed with the
zeroed air takes the score of its inside mean, scaled by its inside share (z-score's behaviour there).

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

KNOWN_SCHEMES = ("zscore", "rank")
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
    """``resample`` of the z-scored (C, Z, Y, X) float32 data, channel c inside the nonzero mask when
    ``use_mask[c]``; ``resample`` must be linear with weights summing to one (the plans' resampling).
    ``inside``: the nonzero mask (any channel), when the caller has it already."""
    check_schemes(schemes)
    volume = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if any(use_mask) and inside is None:
        inside = (volume != 0).any(0).numpy()
    n_inside = int(np.count_nonzero(inside)) if inside is not None and any(use_mask) else 0
    offsets = []  # (mean, std, masked) per channel, measured on the original voxels
    tables = {}  # channel -> rank table, measured on the original voxels
    for c, masked in enumerate(use_mask):
        x = volume[c]
        if schemes[c] == "rank":
            tables[c] = rank_table(_sample(x.numpy(), inside if masked and n_inside else None))
            offsets.append((0.0, 1.0, False))
            continue
        if masked and n_inside:  # outside the mask x is 0, so sums over everything are sums inside it
            mean = _sum64(x) / n_inside
            std = max(_sum64(x.square()) / n_inside - mean * mean, 0.0) ** 0.5
        else:  # multi-threaded and numerically stable in float32 (10^8 voxels at prediction time)
            var_t, mean_t = torch.var_mean(x, correction=0)
            mean, std = float(mean_t), float(var_t) ** 0.5
        offsets.append((mean, max(std, 1e-8), bool(masked and n_inside)))
    mask_after = torch.zeros(())
    if n_inside:
        mask_after = torch.from_numpy(resample(torch.from_numpy(inside)[None].float().numpy())[0])
    out = torch.from_numpy(resample(volume.numpy()))  # may be ``data`` itself when no axis changes: stats are taken
    for c, (points, scores) in tables.items():
        masked = bool(use_mask[c] and n_inside)
        out[c] = torch.from_numpy(_apply_rank(out[c].numpy(), points, scores, mask_after.numpy() if masked else None))
    for c, (mean, std, masked) in enumerate(offsets):
        if c in tables:
            continue
        if masked:
            out[c].sub_(mask_after, alpha=mean).div_(std)
        else:
            out[c].sub_(mean).div_(std)
    return out.numpy()


def _apply_rank(x: np.ndarray, points: np.ndarray, scores: np.ndarray, share: np.ndarray | None) -> np.ndarray:
    """Scores of the resampled channel ``x``; with ``share`` (the resampled inside mask), of each
    voxel's inside mean x / share, scaled by share, and 0 where nothing of it was inside."""
    if share is None:
        return np.interp(x, points, scores).astype(np.float32)
    out = np.zeros_like(x, dtype=np.float32)
    some = share > 0
    s = share[some]
    out[some] = np.interp(x[some] / s, points, scores) * s
    return out
