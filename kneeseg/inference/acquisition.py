"""Checks of a scan against what the model was trained for: warnings, not errors.

A model still predicts a scan recorded differently from its training data (the preprocessing
resamples it to the plan's spacing and turns it to the canonical orientation), but a person should
know when the input is far from that: slices much thicker than the plan's spacing leave bone
surfaces interpolated along that axis, and an oblique scan is more rotated than the augmentation
(+-15 degrees, kneeseg/training/data.py) showed the network.
"""

from __future__ import annotations

import numpy as np

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


def acquisition_warnings(geometry: Geometry, config: ConfigurationPlan) -> list[str]:
    """One sentence per way in which the scan differs much from what ``config`` was trained on."""
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
    return warnings
