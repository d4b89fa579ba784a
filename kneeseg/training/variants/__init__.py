"""Trainer variants: small subclasses of :class:`kneeseg.training.trainer.Trainer` that override one
set-up or epoch step, chosen by name with ``kneeseg_train -tr NAME`` (nnU-Net's convention).

To add one: a module here with a ``Trainer`` subclass whose ``name`` is its class name, and an entry
in ``VARIANTS``. Its models land in ``<results>/DatasetNNN_Name/<name>__<plans>__<config>/``.
"""

from __future__ import annotations

import importlib

from kneeseg.errors import KneesegError
from kneeseg.training.layout import TRAINER_NAME

# name -> module (imported only when chosen: the default path does not load the variants)
VARIANTS = {
    "kneesegTrainerElastic": "kneeseg.training.variants.elastic",
    "kneesegTrainerNoIntensityAug": "kneeseg.training.variants.no_intensity_aug",
    "kneesegTrainerRemoveStructures": "kneeseg.training.variants.remove_structures",
    "kneesegTrainerProtocols": "kneeseg.training.variants.protocols",
    "kneesegTrainerProtocolsLight": "kneeseg.training.variants.protocols",
    "kneesegTrainerNoTissueContrast": "kneeseg.training.variants.protocols",
    "kneesegTrainerNoFieldOfView": "kneeseg.training.variants.protocols",
    "kneesegTrainerNoTransferFunctions": "kneeseg.training.variants.protocols",
}
TRAINERS = (TRAINER_NAME, *VARIANTS)


def trainer_class(name: str) -> type:
    """The trainer class called ``name`` (the default ``kneesegTrainer`` or a variant)."""
    if name == TRAINER_NAME:
        from kneeseg.training.trainer import Trainer

        return Trainer
    if name not in VARIANTS:
        raise KneesegError(f"-tr {name}: unknown trainer (known: {', '.join(TRAINERS)})")
    return getattr(importlib.import_module(VARIANTS[name]), name)
