"""Plans taken from a trained model, so that its weights fit a new dataset exactly (fine-tuning).

``kneeseg_plan_and_preprocess --plans-from builtin|MODEL_DIR`` plans a dataset of corrected scans
with the parent model's configuration as it is: spacing, patch, network, normalisation, resampling,
training plan (mirror axes, optimizer, precision) and the machine record it was planned for. Only
what describes the new data comes from the new dataset's fingerprint: its name, median spacing and
shape, intensities, and the label volumes the QC compares a prediction with (the union of the
parent's range and the new cases', since the fine-tuned model has seen both). The preprocessing
signature is then the parent's, which is what ``kneeseg_train --pretrained`` checks.

A parent whose channels or labels differ from the dataset's is refused: its first convolution or its
output layer would not fit, or its outputs would mean other structures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError
from kneeseg.fingerprint import Fingerprint
from kneeseg.planning.planner import dataset_facts
from kneeseg.planning.plans import Plans

DEVICES = ("cuda", "mps", "cpu")


@dataclass
class ParentModel:
    """The trained model whose plans (and then weights) a dataset takes: ``name`` as the user gave it."""

    name: str
    plans: Plans
    configuration: str
    ds: DatasetJson


def check_fits(parent: ParentModel, ds: DatasetJson, where: str) -> None:
    """A one-line KneesegError (naming ``where``, the dataset) when ``parent`` has other channels or labels."""
    theirs = {name.lower(): value for name, value in parent.ds.labels.items()}
    ours = {name.lower(): value for name, value in ds.labels.items()}
    if parent.ds.num_channels != ds.num_channels or theirs != ours:
        raise KneesegError(f"{where}: the model {parent.name} cannot serve this dataset: it has {parent.ds.num_channels} "
                           f"channel(s) and labels {parent.ds.labels}, the dataset {ds.num_channels} channel(s) and labels "
                           f"{ds.labels}")


def plans_from_parent(parent: ParentModel, fingerprint: Fingerprint, ds: DatasetJson, plans_name: str, where: str) -> Plans:
    """The dataset's plans: ``parent``'s configuration, the dataset's facts (see the module's docstring)."""
    check_fits(parent, ds, where)
    config = copy.deepcopy(parent.plans.configuration(parent.configuration))
    config.data_identifier = f"{plans_name}_" + "x".join(f"{s:.3f}" for s in config.spacing) + "mm"  # the planner's naming
    volumes = {}
    parents = {name.lower(): span for name, span in parent.plans.label_volumes_mm3.items()}  # names match in any case
    for name in ds.foreground:
        found = [c.class_volumes_mm3.get(name, 0.0) for c in fingerprint.cases]
        low, high = parents.get(name.lower(), [min(found), max(found)])
        volumes[name] = [round(min(low, *found), 1), round(max(high, *found), 1)]
    return Plans(
        **dataset_facts(fingerprint, ds, plans_name),
        hardware=copy.deepcopy(parent.plans.hardware),
        configurations={config.name: config},
        recommended={device: config.name for device in DEVICES},  # the one configuration with weights to start from
        notes=[f"{config.name}: the configuration of the model {parent.name} ({parent.plans.dataset_name}), taken as it is "
               "(kneeseg_plan_and_preprocess --plans-from) so that its weights fit; fine-tune with kneeseg_train --pretrained"],
        label_volumes_mm3=volumes,
    )
