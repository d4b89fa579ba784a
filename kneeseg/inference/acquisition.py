"""Checks of a scan against what the model was trained for: warnings, not errors.

A model still predicts a scan recorded differently from its training data (the preprocessing
resamples it to the plan's spacing and turns it to the canonical orientation), but a person should
know when the input is far from that: slices much thicker than the plan's spacing leave bone
surfaces interpolated along that axis, an oblique scan is more rotated than the augmentation
(+-15 degrees, kneeseg/training/data.py) showed the network, and a model whose training scans had
their air stored as zeros (plans that normalise inside the nonzero region) has never seen noisy air:
on the real scan's half B stored that way it read soft tissue and air as bone (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kneeseg.io import Geometry
from kneeseg.io.orientation import Orientation
from kneeseg.planning.plans import ConfigurationPlan

MAX_SPACING_RATIO = 2.0
MAX_OBLIQUE_DEG = 15.0  # the training augmentation's rotation range
MIN_ZEROED_SHARE = 0.01  # a scanner that zeroes the air leaves ~30 % of a knee scan at exactly 0
AIR_NOISE_SIGMAS = 4.0  # Rayleigh noise (a magnitude image's air) exceeds 4 sigmas in 3e-4 of its voxels
MIN_ISLAND_VOXELS = 1000  # brighter specks left in the air (noise peaks) join it
CANONICAL_AXES = ("superior-inferior", "anterior-posterior", "left-right")


def oblique_degrees(direction) -> float:
    """The largest angle between an image axis and the patient axis it is closest to."""
    d = np.abs(np.asarray(direction, float).reshape(3, 3))
    return float(np.degrees(np.arccos(np.clip(d.max(axis=0), -1.0, 1.0))).max())


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation from differences of neighbouring nonzero voxels (robust: median
    absolute deviation), so a background the scanner zeroed does not count. Where the air is noise
    its narrower (Rayleigh) differences count too: ~10 % low on the real scan (14.7 against 16.8)."""
    a = image.astype(np.float32)
    d = (a[:, :, 1:] - a[:, :, :-1])[(a[:, :, 1:] != 0) & (a[:, :, :-1] != 0)]
    if d.size == 0:
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return mad / 0.6745 / np.sqrt(2.0)  # a difference of two voxels has twice the variance of one


def air_mask(image: np.ndarray) -> np.ndarray:
    """The scan's air as a scanner that zeroes it would find it: voxels darker than
    ``AIR_NOISE_SIGMAS`` noise sigmas that are connected to the scan's border, and the islands of
    fewer than ``MIN_ISLAND_VOXELS`` voxels left inside that air (noise peaks). For a model trained on
    such scans (``acquisition_warnings`` says when) given one whose air is noise. Dark tissue that
    reaches the border (a cortex where the femur leaves the field of view) counts as air too; at a low
    SNR (muscle within 4 noise sigmas of the air) so does muscle there."""
    dark, _ = ndimage.label(image < AIR_NOISE_SIGMAS * noise_sigma(image))
    faces = [dark[i] for i in (0, -1)] + [dark[:, i] for i in (0, -1)] + [dark[:, :, i] for i in (0, -1)]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    air = np.isin(dark, border[border > 0])
    islands, _ = ndimage.label(~air)
    small = np.bincount(islands.ravel()) < MIN_ISLAND_VOXELS
    small[0] = False  # label 0 is the air itself
    return air | small[islands]


def acquisition_warnings(geometry: Geometry, config: ConfigurationPlan, image: np.ndarray | None = None) -> list[str]:
    """One sentence per way in which the scan (its first channel ``image``, when given) differs much
    from what ``config`` was trained on."""
    warnings = []
    spacing = Orientation.of(geometry.direction).spacing(geometry.spacing_zyx)  # canonical S, P, L order
    for axis, (have, planned) in enumerate(zip(spacing, config.spacing)):
        if have > MAX_SPACING_RATIO * planned:
            warnings.append(f"voxels are {have:.2f} mm along {CANONICAL_AXES[axis]}, {have / planned:.1f}x the model's "
                            f"{planned:.2f} mm: bone surfaces along that axis are interpolated")
    angle = oblique_degrees(geometry.direction)
    if angle > MAX_OBLIQUE_DEG:
        warnings.append(f"image axes are {angle:.0f} degrees oblique to the patient axes; the model was trained on "
                        f"rotations up to {MAX_OBLIQUE_DEG:.0f} degrees")
    if image is not None and config.use_mask_for_norm[0]:
        zeroed = np.count_nonzero(image == 0) / max(image.size, 1)
        if zeroed < MIN_ZEROED_SHARE:
            warnings.append(f"only {100 * zeroed:.1f} % of the voxels are 0, but the model was trained on scans whose air was "
                            f"stored as zeros: it may read noisy air as bone (kneeseg_predict --zero-air stores it as zeros)")
    return warnings
