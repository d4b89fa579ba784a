"""The ablations of the default recipe's other-protocol augmentation (kneeseg/training/protocols.py):
each leaves one part out, so that what it buys can be measured (benchmarks/robustness_real.py).

    kneesegTrainerNoProtocols        none of it: the recipe before it (nnU-Net's augmentation, rotation p 0.2)
    kneesegTrainerNoContrastTransfer without the transfer functions (monotonic, inverted, non-monotonic)
    kneesegTrainerNoTissueContrast   without the per-tissue contrasts
    kneesegTrainerNoFieldOfView      without the cut fields of view
"""

from __future__ import annotations

from kneeseg.training.trainer import Trainer


class kneesegTrainerNoProtocols(Trainer):
    name = "kneesegTrainerNoProtocols"
    contrast_transfer, tissue_contrast, field_of_view = False, False, False
    p_rotation = 0.2


class kneesegTrainerNoContrastTransfer(Trainer):
    name = "kneesegTrainerNoContrastTransfer"
    contrast_transfer = False


class kneesegTrainerNoTissueContrast(Trainer):
    name = "kneesegTrainerNoTissueContrast"
    tissue_contrast = False


class kneesegTrainerNoFieldOfView(Trainer):
    name = "kneesegTrainerNoFieldOfView"
    field_of_view = False
