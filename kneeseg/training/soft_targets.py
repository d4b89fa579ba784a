"""Soft training targets: each class's share of a voxel, carried through the spatial augmentation.

Preprocessing resamples the labels to the plan's spacing and keeps, besides their argmax, each
foreground class's share of every coarse voxel (``CASE_fractions.npy``). Trained against the shares,
the network learns where inside a coarse voxel a bone's surface lies, and the linear upsampling of its
probabilities to the scan's grid can put the surface there; against majority labels it cannot (half B
of the real scan taken to 0.754 mm and back: binary Dice 0.992 with majority labels, 0.999 with the
shares).

The shares ride along as extra image channels through the spatial transform and mirroring, so they
get exactly the same rotation, scaling and flips as the image, and leave before the intensity
transforms touch the image.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

FRACTIONS_KEY = "fractions"


def one_hot_fractions(seg: np.ndarray, labels: list[int]) -> np.ndarray:
    """float32 (len(labels), *seg.shape): 1 where ``seg`` holds the label (shares of an unresampled case)."""
    return np.stack([(seg == value) for value in labels]).astype(np.float32)


class AppendFractionsToData(AbstractTransform):
    """Move the batch's shares (B, K, ...) behind the image channels of ``data``."""

    def __call__(self, **data_dict):
        fractions = data_dict.pop(FRACTIONS_KEY)
        data_dict["_fraction_channels"] = fractions.shape[1]
        data_dict["data"] = np.concatenate([data_dict["data"], fractions.astype(data_dict["data"].dtype)], axis=1)
        return data_dict


class SplitFractionsFromData(AbstractTransform):
    """Take the shares back out of ``data``. The spatial transform's cubic interpolation overshoots a
    little at edges: shares are clipped to [0, 1] and scaled down where they add up to more than 1."""

    def __call__(self, **data_dict):
        n = data_dict.pop("_fraction_channels")
        data = data_dict["data"]
        fractions = np.clip(data[:, -n:], 0.0, 1.0)
        total = fractions.sum(1, keepdims=True)
        fractions /= np.maximum(total, 1.0)
        data_dict["data"] = np.ascontiguousarray(data[:, :-n])
        data_dict[FRACTIONS_KEY] = fractions.astype(np.float32)
        return data_dict
