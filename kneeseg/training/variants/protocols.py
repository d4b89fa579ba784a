"""Trainers that show the network other low-field protocols (kneeseg/training/protocols.py). Not the
default: in 60 minutes on 2 cores the full dose did not learn the recorded scan well enough
(benchmarks/RESULTS.md). It reads other contrasts best, so it is the recipe of the built-in model's
any-contrast second reader (``make model-any-contrast``); the others measure lighter doses and what
each part buys.

    kneesegTrainerProtocols          contrast transfer functions, tissue contrasts (each in 3 patches of
                                     10), fields of view (1 in 5), rotation in 3 patches of 10
    kneesegTrainerProtocolsLight     the same with half the new contrasts (each in 3 patches of 20)
    kneesegTrainerNoTissueContrast   the light dose without the tissue contrasts (transfer functions and
                                     fields of view)
    kneesegTrainerNoFieldOfView      the light dose without the fields of view (both kinds of contrast)
    kneesegTrainerNoTransferFunctions  the light dose without the transfer functions (tissue contrasts and
                                     fields of view)

The three ablations take the light dose: it is the one that read the robustness benchmark's
non-monotonic contrast (0.83 at the built-in model's plan, 193 epochs; the default 0.06).
"""

from __future__ import annotations

from kneeseg.training.data import intensity_transforms, mirror_transforms, spatial_transform
from kneeseg.training.protocols import ContrastTransferTransform, FieldOfViewTransform, TissueContrastTransform
from kneeseg.training.trainer import Trainer


class kneesegTrainerProtocols(Trainer):
    name = "kneesegTrainerProtocols"
    contrast, tissue, field_of_view = True, True, True
    p_contrast = 0.3  # per patch, for each of the transfer functions and the tissue contrasts

    def augmentation(self):
        # Contrasts before nnU-Net's intensity steps (noise, blur, low resolution act on the new contrast);
        # the field of view after them (the sliding window pads a scan with exact zeros).
        new_contrast = ([ContrastTransferTransform(self.p_contrast)] if self.contrast else []) + (
            [TissueContrastTransform(self.p_contrast)] if self.tissue else [])
        return [spatial_transform(self.config.patch_size, p_rot_per_sample=0.3), *new_contrast, *intensity_transforms(),
                *([FieldOfViewTransform()] if self.field_of_view else []), *mirror_transforms(self.config.training.mirror_axes)]


class kneesegTrainerProtocolsLight(kneesegTrainerProtocols):
    name = "kneesegTrainerProtocolsLight"
    p_contrast = 0.15


class kneesegTrainerNoTissueContrast(kneesegTrainerProtocolsLight):
    name = "kneesegTrainerNoTissueContrast"
    tissue = False


class kneesegTrainerNoFieldOfView(kneesegTrainerProtocolsLight):
    name = "kneesegTrainerNoFieldOfView"
    field_of_view = False


class kneesegTrainerNoTransferFunctions(kneesegTrainerProtocolsLight):
    name = "kneesegTrainerNoTransferFunctions"
    contrast = False
