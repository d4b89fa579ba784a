"""kneesegTrainerElastic: the default augmentation plus elastic deformation in one patch in five.

nnU-Net v1's 3D range: the displacement field then has a std of ~1.7 voxels (at most ~5). Not the
default: on the real scan two 60-minute runs scored level with the default recipe (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from kneeseg.training.data import intensity_transforms, mirror_transforms, spatial_transform
from kneeseg.training.trainer import Trainer


class kneesegTrainerElastic(Trainer):
    name = "kneesegTrainerElastic"

    def augmentation(self):
        elastic = spatial_transform(self.config.patch_size, do_elastic_deform=True, alpha=(0.0, 900.0), sigma=(9.0, 13.0),
                                    p_el_per_sample=0.2)
        return [elastic, *intensity_transforms(), *mirror_transforms(self.config.training.mirror_axes)]
