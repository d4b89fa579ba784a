"""Finding a trained model: a model folder (plans.json, dataset.json, fold_N/checkpoint_*.pth,
optional postprocessing.json), either given with -m or found in the results folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kneeseg.dataset.layout import DatasetJson, list_datasets
from kneeseg.errors import KneesegError
from kneeseg.io import read_json
from kneeseg.planning.plans import ConfigurationPlan, Plans
from kneeseg.training.layout import TRAINER_NAME

CHECKPOINT = "checkpoint_final.pth"


@dataclass
class TrainedModel:
    folder: Path
    plans: Plans
    ds: DatasetJson
    config: ConfigurationPlan
    checkpoints: list[Path]

    @property
    def postprocessing_file(self) -> Path:
        return self.folder / "postprocessing.json"


def trained_folds(folder: Path, checkpoint: str = CHECKPOINT) -> list[str]:
    folds = [p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).exists()]
    return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def load_model(folder: Path, folds: list[str] | None = None, checkpoint: str = CHECKPOINT) -> TrainedModel:
    folder = Path(folder)
    for name in ("plans.json", "dataset.json", "model.json"):
        if not (folder / name).exists():
            raise KneesegError(f"{folder}: not a trained model folder (no {name})")
    plans = Plans.load(folder / "plans.json")
    config = plans.configuration(read_json(folder / "model.json")["configuration"])
    available = trained_folds(folder, checkpoint)
    chosen = folds or [f for f in available if f != "all"] or available
    if not chosen:
        raise KneesegError(f"{folder}: no trained fold found (no fold_*/{checkpoint})")
    missing = [f for f in chosen if f not in available]
    if missing:
        raise KneesegError(f"{folder}: fold {missing[0]} has no {checkpoint} (trained: {', '.join(available) or 'none'})")
    return TrainedModel(folder, plans, DatasetJson.load(folder / "dataset.json"), config,
                        [folder / f"fold_{f}" / checkpoint for f in chosen])


def find_model(results: Path, dataset: str | int | None = None, configuration: str | None = None, device: str = "cpu",
               folds: list[str] | None = None, checkpoint: str = CHECKPOINT) -> TrainedModel:
    """The one trained model in ``results`` (narrowed by dataset / configuration); ambiguity is an error."""
    names = list_datasets(results)
    if dataset is not None:
        from kneeseg.dataset.layout import find_dataset

        names = [find_dataset(results, dataset)]
    candidates = [m for n in names for m in sorted((results / n).glob(f"{TRAINER_NAME}__*__*")) if trained_folds(m, checkpoint)]
    if configuration is not None:
        candidates = [m for m in candidates if m.name.split("__")[-1] == configuration]
    if not candidates:
        raise KneesegError(f"{results}: no trained model found" + (f" for {dataset}" if dataset else "")
                           + (f" ({configuration})" if configuration else ""))
    if len({m.parent for m in candidates}) > 1:
        raise KneesegError(f"{results}: several trained datasets ({', '.join(sorted({m.parent.name for m in candidates}))}); choose with -d")
    if len(candidates) > 1:
        recommended = Plans.load(candidates[0] / "plans.json").recommended_configuration(device)
        preferred = [m for m in candidates if m.name.split("__")[-1] == recommended]
        if len(preferred) != 1:
            raise KneesegError(f"{results}: several trained models ({', '.join(m.name for m in candidates)}); choose with -c")
        candidates = preferred
    return load_model(candidates[0], folds, checkpoint)
