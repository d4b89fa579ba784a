"""train(): resolve dataset, plans and configuration, then run the generic trainer."""

from __future__ import annotations

from kneeseg.dataset.layout import DatasetJson, find_dataset
from kneeseg.errors import KneesegError
from kneeseg.paths import KneesegPaths
from kneeseg.planning.plans import Plans
from kneeseg.training.trainer import Trainer, TrainingResult, TrainOptions


def load_plans(paths: KneesegPaths, dataset: str | int | None, plans_name: str = "kneesegPlans") -> tuple[str, Plans, DatasetJson]:
    """(dataset folder name, plans, dataset.json) from the preprocessed folder."""
    name = find_dataset(paths.preprocessed, dataset)
    folder = paths.preprocessed / name
    plans_path = folder / f"{plans_name}.json"
    if not plans_path.exists():
        raise KneesegError(f"{plans_path}: plans not found; run kneeseg_plan_and_preprocess first")
    return name, Plans.load(plans_path), DatasetJson.load(folder / "dataset.json")


def train(paths: KneesegPaths, fold: str = "0", dataset: str | int | None = None, configuration: str | None = None,
          plans_name: str = "kneesegPlans", options: TrainOptions | None = None) -> TrainingResult:
    """Train one fold. ``configuration`` defaults to the one the plans recommend for ``options.device``."""
    options = options or TrainOptions()
    options.fold = str(fold)
    _, plans, ds = load_plans(paths, dataset, plans_name)
    config = plans.configuration(configuration or plans.recommended_configuration(options.device))
    return Trainer(plans, config, ds, paths.preprocessed, paths.results, options).run()
