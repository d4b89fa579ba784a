"""The inverse of preprocessing: class probabilities on the plan's grid -> labels on the input's grid
(and in the input's own array layout: the canonical orientation is undone last).

Probabilities are resampled class by class (linear / area, as in the plans) to the cropped original
shape and reduced to an argmax on the fly (``resampled_argmax``: where the plan's grid is the coarser
one and no probabilities are kept, only between source voxels that disagree), so the peak memory is
two float volumes of the original crop, not one per class; the crop is then pasted back into the
original extent.
"""

from __future__ import annotations

import numpy as np

from kneeseg.io.orientation import Orientation
from kneeseg.preprocessing.resampling import resampled_argmax


def restore_original(probabilities: np.ndarray, properties: dict, label_values: list[int],
                     keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels uint8 in the original (z, y, x) shape, probabilities there too if asked, else None).

    ``probabilities`` is (K, Z, Y, X) at the plan's spacing, channel k standing for ``label_values[k]``.
    """
    crop_shape = properties["shape_after_crop"]
    box = properties["crop_bbox"]
    separate = properties.get("separate_z_axis")
    original = properties["canonical_shape"]
    crop = tuple(slice(lo, hi) for lo, hi in box)
    labels = np.zeros(original, np.uint8)
    full_probs = None
    if keep_probabilities:
        full_probs = np.zeros((len(label_values), *original), np.float32)
        full_probs[0] = 1.0  # outside the crop: background

    def keep(k, channel):
        full_probs[k][crop] = channel.numpy()

    labels[crop] = resampled_argmax(probabilities, label_values, crop_shape, separate,
                                    on_channel=keep if keep_probabilities else None)
    orientation = Orientation.from_dict(properties["orientation"])  # back to the input's array layout
    return orientation.from_canonical(labels), None if full_probs is None else orientation.from_canonical(full_probs)
