"""Intensity normalisation named in the plans (per channel)."""

from __future__ import annotations

import numpy as np

from kneeseg.errors import KneesegError


def zscore(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Z-score per case; with a mask, statistics come from inside it and outside becomes 0.

    MRI intensities have no absolute scale, so each scan is normalised on its own (nnU-Net's rule).
    """
    image = image.astype(np.float32, copy=False)
    values = image[mask] if mask is not None else image
    if values.size == 0:
        values = image
    mean, std = float(values.mean()), float(values.std())
    out = (image - mean) / max(std, 1e-8)
    if mask is not None:
        out[~mask] = 0
    return out


def normalize(data: np.ndarray, schemes: list[str], use_mask: list[bool], nonzero: np.ndarray) -> np.ndarray:
    """Normalise (C, Z, Y, X) data channel by channel as the plans say."""
    out = np.empty(data.shape, np.float32)
    for c, (scheme, masked) in enumerate(zip(schemes, use_mask)):
        if scheme != "zscore":
            raise KneesegError(f"normalisation '{scheme}' is not known (known: zscore)")
        out[c] = zscore(data[c], nonzero if masked else None)
    return out
