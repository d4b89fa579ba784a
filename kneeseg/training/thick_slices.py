"""Thick-slice augmentation: one axis of a patch seen at a coarser slice spacing.

Low-field knee protocols are often 2D multi-slice: 0.6-0.8 mm in plane, 2-4 mm between slices,
along whichever axis the scanner acquired (axial, coronal or sagittal). Preprocessing resamples such
a scan up to the plan's isotropic spacing, which leaves it smooth along one axis. batchgenerators'
``SimulateLowResolutionTransform`` zooms all axes alike; this transform coarsens one random axis
only, by averaging groups of voxels (what a thick slice records) and interpolating back linearly
(what the preprocessing does), so the network sees that look during training.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from kneeseg.preprocessing.resampling import along_axis, area_weights, linear_weights


class ThickSliceTransform(AbstractTransform):
    """Per sample, with probability ``p_per_sample``: pick one spatial axis and a factor in
    ``factor_range``; average the image along that axis down to ``n / factor`` slices and
    interpolate back to ``n``. Labels are left as they are (the anatomy did not change).

    numpy only: this runs in forked augmentation workers, where torch's thread pool (already
    started by the parent) can deadlock.
    """

    def __init__(self, factor_range: tuple[float, float] = (1.5, 3.0), p_per_sample: float = 0.15,
                 data_key: str = "data"):
        self.factor_range = factor_range
        self.p_per_sample = p_per_sample
        self.data_key = data_key

    def __call__(self, **data_dict):
        data = data_dict[self.data_key]
        spatial = data.shape[2:]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            axis = np.random.randint(len(spatial))
            n = spatial[axis]
            coarse = max(1, int(round(n / np.random.uniform(*self.factor_range))))
            there_and_back = linear_weights(coarse, n) @ area_weights(n, coarse)  # (n, n)
            data[b] = along_axis(data[b], there_and_back, axis + 1).astype(data.dtype, copy=False)
        data_dict[self.data_key] = data
        return data_dict
