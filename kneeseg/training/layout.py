"""Where trained models live (light: the predictor imports this without the training stack)."""

from __future__ import annotations

from pathlib import Path

TRAINER_NAME = "kneesegTrainer"  # the default trainer; variants are named like nnU-Net's (kneesegTrainerElastic)


def model_dir(results: Path, dataset_name: str, plans_name: str, configuration: str, trainer: str = TRAINER_NAME) -> Path:
    """``<results>/DatasetNNN_Name/<trainer>__<plans>__<configuration>``, nnU-Net's convention."""
    return results / dataset_name / f"{trainer}__{plans_name}__{configuration}"
