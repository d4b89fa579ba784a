"""The Python API behind the commands: each function composes stages; the CLIs only parse arguments.

    train(paths, fold)                          plan-driven training + full prediction of the fold's validation cases
    predict(inp, out, paths=... | model_dir=...)  scans in, bone labels out (input geometry and format)
    find_postprocessing(paths)                   choose post-processing on the cross-validation predictions
    evaluate(ref, pred, output)                  metrics JSON + CSV
    export_stl(seg, out_dir)                     one STL per bone
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kneeseg.dataset.layout import KNEE_LABELS, DatasetJson, channel_files, find_dataset, foreground_labels
from kneeseg.errors import KneesegError
from kneeseg.export.overlays import save_overlay
from kneeseg.inference.acquisition import acquisition_warnings, needs_zeroed_air, with_air_zeroed
from kneeseg.inference.cases import InputCase, discover_cases
from kneeseg.inference.model import TrainedModel, find_model, load_model
from kneeseg.inference.predictor import Predictor
from kneeseg.io import Geometry, atomic_path, ensure_writable_folder, read_image, read_json, strip_ending, write_image
from kneeseg.io.nifti import has_nonfinite
from kneeseg.paths import KneesegPaths
from kneeseg.planning.plans import Plans
from kneeseg.postprocessing.operations import apply_postprocessing, checked_steps

# The training stack (batchgenerators, scipy.signal) and scikit-image take seconds to import; the
# everyday command, kneeseg_predict, needs neither, so they are imported where they are used.
if TYPE_CHECKING:
    from kneeseg.export.stl import MeshReport
    from kneeseg.training.trainer import TrainingResult, TrainOptions


def load_plans(paths: KneesegPaths, dataset: str | int | None, plans_name: str = "kneesegPlans") -> tuple[str, Plans, DatasetJson]:
    """(dataset folder name, plans, dataset.json) from the preprocessed folder."""
    name = find_dataset(paths.preprocessed, dataset)
    folder = paths.preprocessed / name
    plans_path = folder / f"{plans_name}.json"
    if not plans_path.exists():
        raise KneesegError(f"{plans_path}: plans not found; run kneeseg_plan_and_preprocess first")
    return name, Plans.load(plans_path), DatasetJson.load(folder / "dataset.json")


def train(paths: KneesegPaths, fold: str = "0", dataset: str | int | None = None, configuration: str | None = None,
          plans_name: str = "kneesegPlans", options: TrainOptions | None = None, predict_validation: bool = True) -> TrainingResult:
    """Train one fold, then (rank 0) predict its validation cases in full into ``fold_N/validation``
    so that kneeseg_find_postprocessing has cross-validation predictions to choose from."""
    from kneeseg.training.trainer import Trainer, TrainOptions

    options = options or TrainOptions()
    options.fold = str(fold)
    name, plans, ds = load_plans(paths, dataset, plans_name)
    config = plans.configuration(configuration or plans.recommended_configuration(options.device))
    trainer = Trainer(plans, config, ds, paths.preprocessed, paths.results, options)
    result = trainer.run()
    if predict_validation and trainer.rank == 0 and str(fold) != "all":
        model = load_model(trainer.model_dir, [str(fold)])
        raw = paths.raw / name
        images = [channel_files(raw / "imagesTr", c, ds.num_channels, ds.file_ending) for c in trainer.val_ids]
        cases = [InputCase(c, imgs, result.fold_dir / "validation" / f"{c}{ds.file_ending}") for c, imgs in zip(trainer.val_ids, images)]
        _predict_cases(model, cases, options.device, tta=True, postprocess=False, progress=options.progress)
    return result


def _read_case(case: InputCase) -> tuple[list[np.ndarray], Geometry]:
    images, geometry = [], None
    for path in case.channels:
        image, g = read_image(path)
        if has_nonfinite(image, path):
            raise KneesegError(f"{path}: contains NaN or Inf values")
        problem = geometry.matches(g) if geometry is not None else None
        if problem:
            raise KneesegError(f"{path}: geometry does not match channel 0 ({problem})")
        images.append(image)
        geometry = geometry or g
    return images, geometry


def _predict_cases(model: TrainedModel, cases: list[InputCase], device: str, tta: bool, postprocess: bool,
                   save_probabilities: bool = False, overlays: Path | None = None, step: float = 0.5,
                   autocast: str | None = None, progress: bool = True, tta_scales: Sequence[float] = (1.0,),
                   zero_air: bool | None = None) -> list[Path]:
    from tqdm import tqdm

    steps = []
    if postprocess and model.postprocessing_file.exists():
        steps = checked_steps(read_json(model.postprocessing_file), model.postprocessing_file)
    predictor = Predictor(model, device, tta, step, autocast, progress, tta_scales)  # checks scales, checkpoints
    for folder in {c.output.parent for c in cases} | ({Path(overlays)} if overlays else set()):
        ensure_writable_folder(folder)  # before any prediction: fail early, write nothing
    label_values = sorted(model.ds.labels.values())
    written = []
    for case in tqdm(cases, desc="predicting", unit="case", disable=not progress or len(cases) < 2):
        images, geometry = _read_case(case)
        if zero_air or (zero_air is None and needs_zeroed_air(model.config, images[0])):
            if zero_air is None:
                tqdm.write(f"kneeseg: {case.channels[0]}: the model was trained on scans whose air was stored as zeros; "
                           f"storing this scan's air as zeros first (--keep-air: as it is)", file=sys.stderr)
            images = with_air_zeroed(images)  # copies: the input stays
        for warning in acquisition_warnings(geometry, model.config, images[0]):
            tqdm.write(f"kneeseg: warning: {case.channels[0]}: {warning}", file=sys.stderr)
        prediction = predictor.predict(images, geometry, keep_probabilities=save_probabilities)
        labels = apply_postprocessing(prediction.labels, steps, geometry.spacing_zyx) if steps else prediction.labels
        write_image(labels, geometry, case.output)
        written.append(case.output)
        if save_probabilities:
            with atomic_path(case.output.with_name(strip_ending(case.output) + ".npz")) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, probabilities=prediction.probabilities.astype(np.float16), labels=np.array(label_values))
        if overlays:
            save_overlay(images[0], labels, geometry.spacing_zyx, Path(overlays) / f"{case.case_id}.png", case.case_id)
    return written


def resolve_model(paths: KneesegPaths | None = None, model_dir: Path | None = None, dataset=None, configuration=None,
                  folds: list[str] | None = None, device: str = "cpu") -> TrainedModel:
    if model_dir is not None:
        return load_model(Path(model_dir), folds)
    if paths is None:
        raise KneesegError("give a model folder (-m) or a results folder")
    return find_model(paths.results, dataset, configuration, device, folds)


def predict(inp: Path, out: Path, paths: KneesegPaths | None = None, model_dir: Path | None = None,
            dataset: str | int | None = None, configuration: str | None = None, folds: list[str] | None = None,
            device: str = "cpu", tta: bool = True, postprocess: bool = True, save_probabilities: bool = False,
            overlays: Path | None = None, step: float = 0.5, autocast: str | None = None, progress: bool = True,
            tta_scales: Sequence[float] = (1.0,), zero_air: bool | None = None) -> list[Path]:
    """Predict a file, a folder of CASE_0000.<ext> files or a DICOM series folder; returns the outputs.

    ``tta_scales``: also predict on grids at these multiples of the plan's spacing (0.75-1.3) and
    average the probabilities (one sliding window per scale: slower, see benchmarks/RESULTS.md).
    ``zero_air``: store each scan's air as zeros first (``kneeseg.fingerprint.air.air_mask``): None
    (default) does so when the model was trained on scans whose air was stored as zeros and the scan's
    is not (``kneeseg.inference.acquisition.needs_zeroed_air``), saying so on stderr; True always;
    False never."""
    model = resolve_model(paths, model_dir, dataset, configuration, folds, device)
    cases = discover_cases(Path(inp), Path(out), model.ds.num_channels)
    return _predict_cases(model, cases, device, tta, postprocess, save_probabilities, overlays, step, autocast, progress,
                          tta_scales, zero_air)


def find_postprocessing(paths: KneesegPaths, dataset=None, configuration: str | None = None, model_dir: Path | None = None,
                        device: str = "cpu", progress: bool = True) -> dict:
    """Choose post-processing on the folds' validation predictions; writes postprocessing.json."""
    from kneeseg.postprocessing.chooser import choose_postprocessing

    model = resolve_model(paths, model_dir, dataset, configuration, None, device)
    raw_labels = paths.raw / model.plans.dataset_name / "labelsTr"
    pairs = []
    for pred in sorted(model.folder.glob("fold_*/validation/*")):
        ref = raw_labels / pred.name
        if not ref.exists():
            raise KneesegError(f"{ref}: reference label missing for cross-validation prediction {pred}")
        pairs.append((ref, pred))
    if not pairs:
        raise KneesegError(f"{model.folder}: no cross-validation predictions (fold_*/validation); train folds first")
    labels = model.ds.foreground
    return choose_postprocessing(pairs, labels, model.postprocessing_file, progress)


def evaluate(ref: Path, pred: Path, output: Path | None = None, labels: dict[str, int] | None = None,
             overlays: Path | None = None, images: Path | None = None, progress: bool = True) -> dict:
    """Metrics per case and bone (+ all bones); overlays drawn on ``images`` (CASE_0000.*) when given."""
    from kneeseg.evaluation.evaluate import evaluate as evaluate_folders
    from kneeseg.evaluation.metrics import largest_disagreement

    labels = labels or foreground_labels(KNEE_LABELS)
    summary = evaluate_folders(Path(ref), Path(pred), labels, output, progress)
    if overlays:
        for case in summary["per_case"]:
            reference, geometry = read_image(case["reference"])
            predicted, _ = read_image(case["prediction"])
            background = reference.astype(np.float32)
            if images is not None:
                found = sorted(Path(images).glob(f"{case['case']}_0000.*"))
                if found:
                    background = read_image(found[0], np.float32)[0]
            save_overlay(background, predicted, geometry.spacing_zyx, Path(overlays) / f"{case['case']}.png",
                         f"{case['case']}: Dice " + ", ".join(f"{k} {v['dice']:.3f}" for k, v in case["metrics"].items()),
                         reference=reference)
            worst = largest_disagreement(reference, predicted)
            if worst is not None:  # a second picture, through the largest region where the two differ
                (z, y, x), size = worst
                save_overlay(background, predicted, geometry.spacing_zyx, Path(overlays) / f"{case['case']}_largest_error.png",
                             f"{case['case']}: largest disagreement, {size * np.prod(geometry.spacing_zyx):.0f} mm³ "
                             f"around voxel (x {x}, y {y}, z {z})", reference=reference, centre=(z, y, x))
    return summary


def export_stl(segmentation: Path, out_dir: Path, labels: dict[str, int] | None = None, smoothing_iterations: int = 20) -> list[MeshReport]:
    """One watertight, smoothed STL per bone of a label image, in scanner millimetres."""
    from kneeseg.export.stl import export_stl as export_meshes

    seg, geometry = read_image(segmentation)
    labels = labels or foreground_labels(KNEE_LABELS)
    if not np.any(np.isin(seg, list(labels.values()))):
        raise KneesegError(f"{segmentation}: contains none of the labels {labels}")
    return export_meshes(seg, geometry, Path(out_dir), labels, smoothing_iterations)
