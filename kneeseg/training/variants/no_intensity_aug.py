"""kneesegTrainerNoIntensityAug: spatial transforms and mirroring only (no noise, blur, contrast,
gamma, low resolution, thick slices, other protocols' contrasts or fields of view).

For scans from the training scanner only: an ablation of the default recipe, which on the real scan
scored level with it (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from kneeseg.training.data import mirror_transforms
from kneeseg.training.trainer import Trainer


class kneesegTrainerNoIntensityAug(Trainer):
    name = "kneesegTrainerNoIntensityAug"

    def augmentation(self):
        return [self.spatial(), *mirror_transforms(self.config.training.mirror_axes)]
