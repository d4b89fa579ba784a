"""Fine-tuning: a trained model's weights as the start (``kneeseg_train --pretrained``) and its schedule.

The parent is 'builtin' (the model that ships with kneeseg) or a model folder. Its weights are read
weights-only (kneeseg.training.checkpoint) from its ``fold_all`` when it has one (trained on all its
cases), else from its lowest-numbered fold: one set of weights, not a mean of folds, whose sha256
the new model records. They must fit exactly: the dataset is planned with the parent's
configuration (``kneeseg_plan_and_preprocess --plans-from``), and a parent whose channels, labels,
network or preprocessing differ from the configuration being trained is refused in one line.

The schedule (:class:`FineTuneSchedule`) starts from weights that already segment bone: a budget
of minutes instead of an hour, and a warm-up, so that the first steps on a handful of cases (whose
Adam moments are not yet estimated) do not throw away what the parent knew; the learning rate stays
the plan's, which lower rates did not beat. Its figures were measured on phantoms
(docs/finetuning.md, benchmarks/finetune_schedule.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError
from kneeseg.io import read_json
from kneeseg.io.protect import sha256_of
from kneeseg.planning.inherit import ParentModel, check_fits
from kneeseg.planning.plans import ConfigurationPlan, Plans
from kneeseg.training.checkpoint import load_checkpoint

CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class FineTuneSchedule:
    """How a fine-tuning trains (the plan's optimizer and poly decay otherwise)."""

    budget_min: float = 10.0  # wall-clock budget when neither --epochs nor --time-budget-min is given
    # The initial learning rate is this share of the plan's. On phantoms (docs/finetuning.md) lower
    # rates lost 0.03-0.09 all-bone Dice in a short run and twice the rate gained 0.01 (one seed)
    lr_factor: float = 1.0
    # Linear warm-up over this many epochs, step by step, from this share of the learning rate: the
    # first steps' Adam moments come from a handful of batches (neutral on the phantoms at the plan's rate)
    warmup_epochs: float = 1.0
    warmup_start: float = 0.1

    def initial_lr(self, plan_lr: float) -> float:
        return plan_lr * self.lr_factor

    def warmed(self, lr: float, progress_epochs: float) -> float:
        """``lr`` at ``progress_epochs`` (epochs done, fractions included) into the training."""
        if self.warmup_epochs <= 0 or progress_epochs >= self.warmup_epochs:
            return lr
        return lr * (self.warmup_start + (1.0 - self.warmup_start) * progress_epochs / self.warmup_epochs)

    def describe(self) -> str:
        return (f"initial learning rate {self.lr_factor:g} x the plan's, linear warm-up from {self.warmup_start:g} x over "
                f"{self.warmup_epochs:g} epoch(s), then poly decay; default budget {self.budget_min:g} min")


@dataclass
class ParentWeights:
    """The weights a fine-tuning starts from, and what the new model records of them."""

    weights: dict
    record: dict  # model.json's "parent"
    folder: Path


def parent_folder(given: str) -> Path:
    """The model folder ``given`` names ('builtin': the model that ships with kneeseg), checked to be one."""
    from kneeseg.models import model_folder

    folder = model_folder(given, "--pretrained")
    for name in ("plans.json", "dataset.json", "model.json"):
        if not (folder / name).exists():
            raise KneesegError(f"--pretrained {given}: not a trained model folder (no {name})")
    return folder


def parent_fold(folder: Path) -> str:
    """``all`` when the parent has it (trained on all its cases), else its lowest-numbered fold."""
    folds = sorted((p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / CHECKPOINT).exists()),
                   key=lambda f: (f != "all", not f.isdigit(), int(f) if f.isdigit() else 0, f))
    if not folds:
        raise KneesegError(f"{folder}: no trained fold found (no fold_*/{CHECKPOINT})")
    return folds[0]


def load_parent(given: str, plans: Plans, config: ConfigurationPlan, ds: DatasetJson) -> ParentWeights:
    """The parent's weights for training ``config`` of ``plans`` on ``ds``; refused in one line when they would not fit."""
    folder = parent_folder(given)
    parent_plans = Plans.load(folder / "plans.json")
    info = read_json(folder / "model.json")
    if not isinstance(info, dict) or not isinstance(info.get("configuration"), str):
        raise KneesegError(f"{folder / 'model.json'}: names no configuration; not a model folder kneeseg wrote")
    parent_config = parent_plans.configuration(info["configuration"])
    check_fits(ParentModel(given, parent_plans, parent_config.name, DatasetJson.load(folder / "dataset.json")), ds,
               plans.dataset_name)
    if asdict(parent_config.network) != asdict(config.network) or \
            parent_config.preprocessing_signature() != config.preprocessing_signature():
        raise KneesegError(f"--pretrained {given}: its {parent_config.name} network or preprocessing differs from {config.name} "
                           f"of {plans.dataset_name}'s plans; plan the dataset with kneeseg_plan_and_preprocess "
                           f"--plans-from {given} first")
    fold = parent_fold(folder)
    checkpoint = folder / f"fold_{fold}" / CHECKPOINT
    state = load_checkpoint(checkpoint)
    if state.get("signature") != parent_config.preprocessing_signature():
        raise KneesegError(f"{checkpoint}: trained with other plans than {folder / 'plans.json'}")
    weights = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v  # a shared model's are half precision
               for k, v in state["network"].items()}
    record = {"model": given, "folder": folder.name, "dataset": parent_plans.dataset_name,
              "trainer": info.get("trainer", ""), "configuration": parent_config.name, "fold": fold,
              "checkpoint": f"fold_{fold}/{CHECKPOINT}", "checkpoint_sha256": sha256_of(checkpoint)}
    return ParentWeights(weights, record, folder)


def model_readme(dataset: str, configuration: str, trainer: str, parent: dict, schedule: FineTuneSchedule) -> str:
    """README.md of a fine-tuned model folder: where its weights came from and how it was trained."""
    return (f"# {dataset}: fine-tuned model ({trainer}, {configuration})\n\n"
            f"Fine-tuned with `kneeseg_train FOLD -d {dataset} --pretrained {parent['model']}` from the model "
            f"`{parent['folder']}` (dataset {parent['dataset']}, trainer {parent['trainer']}, configuration "
            f"{parent['configuration']}), starting from the weights of its `{parent['checkpoint']}` "
            f"(sha256 {parent['checkpoint_sha256']}).\n\n"
            f"Schedule: {schedule.describe()}. The plans are the parent's configuration "
            "(`kneeseg_plan_and_preprocess --plans-from`); the training cases, per fold, are in the "
            "dataset's `splits_final.json`, the run in each `fold_N/training_log.txt`. `model.json` records the "
            "parent as `parent`.\n")
