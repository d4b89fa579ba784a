"""Trainers that show the network other low-field protocols (kneeseg/training/protocols.py): the
ablations behind the default recipe, each leaving one part out.

    kneesegTrainerProtocols          contrast transfer functions, tissue contrasts, fields of view
    kneesegTrainerNoTissueContrast   without the tissue contrasts (transfer functions and fields of view)
    kneesegTrainerNoFieldOfView      without the fields of view (both kinds of contrast)
"""

from __future__ import annotations

from kneeseg.training.data import intensity_transforms, mirror_transforms, spatial_transform
from kneeseg.training.protocols import ContrastTransferTransform, FieldOfViewTransform, TissueContrastTransform
from kneeseg.training.trainer import Trainer


class kneesegTrainerProtocols(Trainer):
    name = "kneesegTrainerProtocols"
    contrast, tissue, field_of_view = True, True, True

    def augmentation(self):
        # Contrasts before nnU-Net's intensity steps (noise, blur, low resolution act on the new contrast);
        # the field of view after them (the sliding window pads a scan with exact zeros).
        new_contrast = ([ContrastTransferTransform()] if self.contrast else []) + ([TissueContrastTransform()] if self.tissue else [])
        return [spatial_transform(self.config.patch_size, p_rot_per_sample=0.3), *new_contrast, *intensity_transforms(),
                *([FieldOfViewTransform()] if self.field_of_view else []), *mirror_transforms(self.config.training.mirror_axes)]


class kneesegTrainerNoTissueContrast(kneesegTrainerProtocols):
    name = "kneesegTrainerNoTissueContrast"
    tissue = False


class kneesegTrainerNoFieldOfView(kneesegTrainerProtocols):
    name = "kneesegTrainerNoFieldOfView"
    field_of_view = False
