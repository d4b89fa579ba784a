"""kneesegTrainerNoIntensityAug: spatial transforms and mirroring only (no noise, blur, contrast,
gamma, low resolution or thick slices).

For scans from the training scanner only: an ablation of the default recipe, which on the real scan
scored level with it (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from kneeseg.training.data import mirror_transforms, spatial_transform
from kneeseg.training.trainer import Trainer


class kneesegTrainerNoIntensityAug(Trainer):
    name = "kneesegTrainerNoIntensityAug"

    def augmentation(self):
        return [spatial_transform(self.config.patch_size), *mirror_transforms(self.config.training.mirror_axes)]
