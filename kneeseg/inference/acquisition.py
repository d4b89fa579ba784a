"""Checks of a scan against what the model was trained for: warnings, not errors.

A model still predicts a scan recorded differently from its training data (the preprocessing
resamples it to the plan's spacing and turns it to the canonical orientation), but a person should
know when the input is far from that: slices much thicker than the plan's spacing leave bone
surfaces interpolated along that axis, an oblique scan is more rotated than the augmentation
(+-15 degrees, kneeseg/training/data.py) showed the network, and a model whose training scans had
their air stored as zeros (plans that normalise inside the nonzero region) has never seen noisy air:
on the real scan's half B stored that way it read soft tissue and air as bone (benchmarks/RESULTS.md).
That last one the predictor mends by default (``needs_zeroed_air``, ``with_air_zeroed``); the
warning is for a user who turned that off.
"""

from __future__ import annotations

import numpy as np

# air_is_zeroed and with_air_zeroed live with the air (the preprocessing of a fine-tuning dataset uses them too)
from kneeseg.fingerprint.air import MIN_ZEROED_SHARE, air_is_zeroed, with_air_zeroed  # noqa: F401
from kneeseg.io import Geometry
from kneeseg.io.orientation import Orientation
from kneeseg.planning.plans import ConfigurationPlan

MAX_SPACING_RATIO = 2.0
MAX_OBLIQUE_DEG = 15.0  # the training augmentation's rotation range
CANONICAL_AXES = ("superior-inferior", "anterior-posterior", "left-right")


def oblique_degrees(direction) -> float:
    """The largest angle between an image axis and the patient axis it is closest to."""
    d = np.abs(np.asarray(direction, float).reshape(3, 3))
    return float(np.degrees(np.arccos(np.clip(d.max(axis=0), -1.0, 1.0))).max())


def needs_zeroed_air(config: ConfigurationPlan, image: np.ndarray) -> bool:
    """Whether ``config`` was trained on scans whose air was stored as zeros (plans that normalise
    inside the nonzero region) and ``image`` (a first channel) has its air stored otherwise."""
    return bool(config.use_mask_for_norm[0]) and not air_is_zeroed(image)


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
    if image is not None and needs_zeroed_air(config, image):
        zeroed = np.count_nonzero(image == 0) / image.size
        warnings.append(f"only {100 * zeroed:.1f} % of the voxels are 0, but the model was trained on scans whose air was "
                        f"stored as zeros: it may read noisy air as bone (without --keep-air, kneeseg_predict stores it as zeros)")
    return warnings
