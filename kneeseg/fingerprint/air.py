"""The air around the body: found the same way whether the scanner stored it as zeros or as noise.

Some low-field scanners (the Esaote scan of KneeBones3Dify) write exact zeros in the air; most leave
a magnitude image's Rician noise there. Two stages need to tell air from body independently of that:
the fingerprint (the body's extent sizes the plans' patches and CPU spacing, which must not depend on
how the scanner stores its background) and prediction (a model trained on zeroed air given a scan
with noisy air stores that air as zeros first: kneeseg.inference.acquisition).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kneeseg.arrays import faces

# The air is found on the image's local mean over AIR_MEAN_VOXELS^3 voxels: Rician noise with no signal
# averages to its Rayleigh mean, 1.25 noise sigmas, with a spread of ~0.06 sigma (0.655 / sqrt(125)),
# while soft tissue that is dark voxel by voxel keeps its own mean. On the real scan's half B with noisy
# air, a 4-sigma threshold on single voxels took 58 % of the soft tissue at SNR / 2 (the scan's soft
# tissue has a median of 115, 2.4 sigmas at SNR / 3) and bone at SNR / 3; the local mean under 2 sigmas
# takes 5-8 % (the dark rim at the skin) and no bone at SNR / 1-3 (benchmarks/RESULTS.md). The mean
# blurs the skin's edge by AIR_MEAN_VOXELS // 2 voxels; within that distance of the air found, voxels
# under EDGE_NOISE_SIGMAS on their own join it (a Rayleigh air voxel exceeds 4 sigmas with p = 3e-4).
AIR_MEAN_VOXELS = 5
AIR_NOISE_SIGMAS = 2.0
EDGE_NOISE_SIGMAS = 4.0
MIN_ISLAND_VOXELS = 1000  # brighter specks left in the air join it
MIN_ZEROED_SHARE = 0.01  # a scanner that zeroes the air leaves ~30 % of a knee scan at exactly 0


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation from differences of neighbouring nonzero voxels (robust: median
    absolute deviation), so a background the scanner zeroed does not count. Where the air is noise
    its narrower (Rayleigh) differences count too: ~10 % low on the real scan (14.7 against 16.8)."""
    a = image.astype(np.float32, copy=False)
    d = (a[:, :, 1:] - a[:, :, :-1])[(a[:, :, 1:] != 0) & (a[:, :, :-1] != 0)]
    if d.size == 0:
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return mad / 0.6745 / np.sqrt(2.0)  # a difference of two voxels has twice the variance of one


def air_mask(image: np.ndarray) -> np.ndarray:
    """The scan's air as a scanner that zeroes it would find it, a bool array of the image's shape:
    the voxels connected to the scan's border that are 0 or whose local mean (of the nonzero voxels
    within ``AIR_MEAN_VOXELS`` along each axis) is under ``AIR_NOISE_SIGMAS`` noise sigmas; at the
    edge of that air, the voxels within ``AIR_MEAN_VOXELS // 2`` of it that are under
    ``EDGE_NOISE_SIGMAS`` on their own; and the islands of fewer than ``MIN_ISLAND_VOXELS`` voxels
    left inside it. Dark tissue that reaches the border (a cortex where the femur leaves the field
    of view) counts as air too."""
    sigma = noise_sigma(image)
    # The mean of each neighbourhood's nonzero voxels: where a scanner zeroed the air, the tissue at its
    # edge keeps its own mean, so the air found in a zeroed scan is its zeros and the scanner's dark
    # rim, as in the same scan with noisy air (the zeros themselves are air, whatever their neighbours).
    nonzero = image != 0
    count = ndimage.uniform_filter(nonzero.astype(np.float32), AIR_MEAN_VOXELS)  # share of nonzero neighbours
    local_mean = ndimage.uniform_filter(image.astype(np.float32, copy=False), AIR_MEAN_VOXELS)
    np.divide(local_mean, count, out=local_mean, where=count > 1e-6)  # elsewhere all neighbours are 0: so is the sum
    dark, _ = ndimage.label((local_mean < AIR_NOISE_SIGMAS * sigma) | ~nonzero)
    del count, local_mean
    border = np.unique(np.concatenate([f.ravel() for f in faces(dark)]))
    air = np.isin(dark, border[border > 0])
    air = ndimage.binary_dilation(air, iterations=AIR_MEAN_VOXELS // 2, mask=image < EDGE_NOISE_SIGMAS * sigma) | air
    islands, _ = ndimage.label(~air)
    small = np.bincount(islands.ravel()) < MIN_ISLAND_VOXELS
    small[0] = False  # label 0 is the air itself
    return air | small[islands]


def air_is_zeroed(image: np.ndarray) -> bool:
    """Whether a scan stores its air as zeros: at least ``MIN_ZEROED_SHARE`` of its voxels are exactly 0."""
    return bool(np.count_nonzero(image == 0) >= MIN_ZEROED_SHARE * image.size)


def with_air_zeroed(images: list[np.ndarray]) -> list[np.ndarray]:
    """Copies of a case's channels with the air found on the first one (``air_mask``) set to 0 in
    every channel, as a scanner that zeroes the air would have stored them."""
    air = air_mask(images[0])
    return [np.where(air, np.zeros((), image.dtype), image) for image in images]
