"""Where trained models live (light: the predictor imports this without the training stack)."""

from __future__ import annotations

from pathlib import Path

TRAINER_NAME = "kneesegTrainer"


def model_dir(results: Path, dataset_name: str, plans_name: str, configuration: str) -> Path:
    """``<results>/DatasetNNN_Name/kneesegTrainer__<plans>__<configuration>``."""
    return results / dataset_name / f"{TRAINER_NAME}__{plans_name}__{configuration}"
