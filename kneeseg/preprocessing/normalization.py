"""Intensity normalisation named in the plans (per channel)."""

from __future__ import annotations

import numpy as np
import torch

from kneeseg.errors import KneesegError


def zscore(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Z-score per case; with a mask, statistics come from inside it and outside becomes 0.

    MRI intensities have no absolute scale, so each scan is normalised on its own (nnU-Net's rule).
    """
    image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    inside = torch.from_numpy(mask) if mask is not None and mask.any() else None
    # Multi-threaded float64 sums instead of a masked copy: this runs on 10^8 voxels at prediction time.
    kept = image if inside is None else torch.where(inside, image, 0.0)
    n = float(image.numel() if inside is None else inside.sum())
    mean = float(kept.sum(dtype=torch.float64)) / n
    std = (max(float((kept * kept).sum(dtype=torch.float64)) / n - mean * mean, 0.0)) ** 0.5
    out = kept.sub_(mean).div_(max(std, 1e-8)) if inside is not None else (image - mean) / max(std, 1e-8)
    if inside is not None:
        out.masked_fill_(~inside, 0.0)
    return out.numpy()


def normalize(data: np.ndarray, schemes: list[str], use_mask: list[bool], nonzero: np.ndarray) -> np.ndarray:
    """Normalise (C, Z, Y, X) data channel by channel as the plans say."""
    out = np.empty(data.shape, np.float32)
    for c, (scheme, masked) in enumerate(zip(schemes, use_mask)):
        if scheme != "zscore":
            raise KneesegError(f"normalisation '{scheme}' is not known (known: zscore)")
        out[c] = zscore(data[c], nonzero if masked else None)
    return out
