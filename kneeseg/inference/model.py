"""A trained model: a model folder (plans.json, dataset.json, model.json, fold_N/checkpoint_*.pth,
optional postprocessing.json), given with -m or found in the results folder, and its networks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kneeseg.dataset.layout import DatasetJson, find_dataset, list_datasets
from kneeseg.errors import KneesegError
from kneeseg.io import read_json
from kneeseg.planning.plans import ConfigurationPlan, Plans
from kneeseg.training.checkpoint import load_checkpoint
from kneeseg.training.network import UNet, place

CHECKPOINT = "checkpoint_final.pth"


@dataclass
class TrainedModel:
    folder: Path
    plans: Plans
    ds: DatasetJson
    config: ConfigurationPlan
    checkpoints: list[Path]
    # Reads the scans this model cannot (kneeseg.inference.predictor): a model of the same labels
    second_reader: TrainedModel | None = None

    @property
    def readers(self) -> list[TrainedModel]:
        """This model and its second reader, if it has one."""
        return [self, *([self.second_reader] if self.second_reader else [])]

    @property
    def postprocessing_file(self) -> Path:
        return self.folder / "postprocessing.json"

    def load_networks(self, device: str | torch.device = "cpu") -> list[torch.nn.Module]:
        """One network per fold, in evaluation mode on ``device``; a checkpoint trained with other
        plans than the folder's is refused."""
        networks: list[torch.nn.Module] = []
        for path in self.checkpoints:
            state = load_checkpoint(path)
            if state.get("signature") != self.config.preprocessing_signature():
                raise KneesegError(f"{path}: trained with other plans than {self.folder / 'plans.json'}")
            net = UNet(self.config.network, self.ds.num_channels, len(self.ds.labels))
            try:
                net.load_state_dict(float32_weights(state["network"]))
            except RuntimeError:  # shapes or names differ: another network than the folder's files describe
                raise KneesegError(f"{path}: does not fit {self.folder / 'plans.json'} and dataset.json "
                                   f"({self.ds.num_channels} channel(s), {len(self.ds.labels)} labels)") from None
            networks.append(place(net, self.config.network, device).eval())
        return networks


def float32_weights(weights: dict) -> dict:
    """``weights`` with every floating-point tensor in float32, the precision the networks are built
    in: an exported model (kneeseg.inference.archive) stores them in half precision to halve its size."""
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in weights.items()}


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


def with_second_reader(model: TrainedModel, folder: Path) -> TrainedModel:
    """``model`` with the model folder ``folder`` (every fold trained there) as its second reader,
    checked to be another model that segments the same labels from the same channels."""
    if Path(folder).resolve() == model.folder.resolve():
        raise KneesegError(f"--second-reader {folder}: the model itself (a second reader is another model)")
    try:
        second = load_model(folder)
    except KneesegError as exc:
        raise KneesegError(f"--second-reader {folder}: {exc}") from None
    if second.ds.labels != model.ds.labels or second.ds.num_channels != model.ds.num_channels:
        raise KneesegError(f"--second-reader {folder}: a second reader must segment the labels of {model.folder} from as "
                           f"many channels ({model.ds.labels}, {model.ds.num_channels}); it has {second.ds.labels}, "
                           f"{second.ds.num_channels}")
    return replace(model, second_reader=second)


class NoModelFound(KneesegError):
    """The results folder holds no trained model that fits (the built-in model may stand in)."""


def find_model(results: Path, dataset: str | int | None = None, configuration: str | None = None, device: str = "cpu",
               folds: list[str] | None = None, checkpoint: str = CHECKPOINT, trainer: str | None = None) -> TrainedModel:
    """The one trained model in ``results`` (narrowed by dataset / configuration / trainer); ambiguity is an error."""
    names = [find_dataset(results, dataset)] if dataset is not None else list_datasets(results)
    candidates = [m for n in names for m in sorted((results / n).glob("*__*__*")) if trained_folds(m, checkpoint)]
    if configuration is not None:
        candidates = [m for m in candidates if m.name.split("__")[-1] == configuration]
    if trainer is not None:
        candidates = [m for m in candidates if m.name.split("__")[0] == trainer]
    if not candidates:
        raise NoModelFound(f"{results}: no trained model found" + (f" for {dataset}" if dataset else "")
                           + "".join(f" ({v})" for v in (trainer, configuration) if v))
    if len({m.parent for m in candidates}) > 1:
        raise KneesegError(f"{results}: several trained datasets ({', '.join(sorted({m.parent.name for m in candidates}))}); choose with -d")
    if len(candidates) > 1:
        recommended = Plans.load(candidates[0] / "plans.json").recommended_configuration(device)
        preferred = [m for m in candidates if m.name.split("__")[-1] == recommended]
        if len(preferred) != 1:
            raise KneesegError(f"{results}: several trained models ({', '.join(m.name for m in candidates)}); "
                               "choose with -c or -tr")
        candidates = preferred
    return load_model(candidates[0], folds, checkpoint)
