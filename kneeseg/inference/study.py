"""Predicting a study: every case of a list read, checked, predicted, post-processed and written.

The model is loaded once; each case is read (every channel, checked for NaN, a constant image and
matching geometry), its air stored as zeros where the model needs that, checked against what the
model was trained for (warnings on stderr), predicted, post-processed with the model's chosen steps
and written with the input's geometry (a ``.seg.nrrd`` output as a 3D Slicer segmentation with the
model's label names). Beside plain label maps, on request, an ITK-SNAP label description and a 3D
Slicer colour table (kneeseg.io.labelfiles) once per output folder. Before the first case: outputs that would replace an input
are refused and the output folders checked. Outputs are written atomically. In a study of several
cases a case that fails is reported and skipped (whatever of it was written is removed); the others
are written, and the failures are listed at the end (a KneesegError, so the command exits non-zero).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kneeseg.errors import KneesegError, warn
from kneeseg.inference.acquisition import acquisition_warnings, needs_zeroed_air, with_air_zeroed
from kneeseg.inference.cases import InputCase
from kneeseg.inference.model import TrainedModel
from kneeseg.inference.predictor import Predictor
from kneeseg.inference.qc import prediction_warnings
from kneeseg.inference.timing import StageClock, timed
from kneeseg.io import (
    Geometry,
    atomic_path,
    ensure_writable_folder,
    read_image,
    read_json,
    refuse_overwriting_inputs,
    strip_ending,
    write_image,
)
from kneeseg.io.dicomseg import DICOM_SEG_ENDING, dicom_seg_sources, write_dicom_seg
from kneeseg.io.image import SEGMENTATION_ENDING, file_ending
from kneeseg.io.labelfiles import label_description_paths, write_label_descriptions
from kneeseg.io.nifti import has_nonfinite
from kneeseg.io.protect import removed_on_failure
from kneeseg.postprocessing.operations import apply_postprocessing, checked_steps


@dataclass
class PredictionOptions:
    """How a study is predicted (``kneeseg_predict``'s flags)."""

    device: str = "cpu"
    tta: bool = True  # mirroring along the plan's mirror axes
    tta_scales: Sequence[float] = (1.0,)  # multiples of the plan's spacing (0.75-1.3), probabilities averaged
    step: float = 0.5  # sliding-window step, a fraction of the patch
    autocast: str | None = None  # default: the plan's, where this device runs it natively
    postprocess: bool = True  # apply the model's postprocessing.json
    # Store each scan's air as zeros first: None (default) where the model was trained on zeroed air and
    # the scan's is not (saying so on stderr), True always, False never.
    zero_air: bool | None = None
    save_probabilities: bool = False  # CASE.npz beside each output
    progress: bool = True
    # Label descriptions (ITK-SNAP, Slicer colour table) beside plain label maps: None (no), "folder"
    # (labels.itksnap.txt, labels.ctbl once per output folder) or "beside" (STEM.itksnap.txt, STEM.ctbl).
    label_descriptions: str | None = None
    # QC warnings on stderr and to the after-case hook (kneeseg.inference.qc); off for a training's
    # validation predictions, whose labels the user has
    qc: bool = True
    # With qc: a scan the model is unsure of is read again with its contrast inverted, kept where the
    # model is sure of that reading (kneeseg.inference.predictor)
    inverted_retry: bool = True
    # With qc: a scan the model is unsure of either way is read by its second reader: "auto" (the
    # built-in model's any-contrast model, kneeseg.models), "none", or a model folder
    second_reader: str = "auto"
    # The second reader teaches the model the scan's contrast, and the labels are both readings'
    # (kneeseg.inference.contrast); else the second reader's alone
    teach_contrast: bool = True
    timings: bool = False  # one line per case on stderr: where the time went (kneeseg.inference.timing)


@dataclass
class StudyOptions:
    """What a prediction writes besides the label maps, and how a folder run is shared and resumed
    (``kneeseg_predict``'s other flags; kneeseg.api.predict)."""

    output_type: str = "label-map"  # or "dicom-seg": a DICOM SEG per DICOM series input
    statistics: bool = False  # CASE.statistics.json per case and, for a folder, statistics.csv
    overlays: Path | None = None  # a folder for one QC PNG per case
    stl: Path | None = None  # a folder for checked STL bones
    stl_faces: int | None = None  # at most this many triangles per bone
    # Redo every case of a folder run, and replace files kneeseg has no record of making (a label map
    # drawn by hand, a file of that name from elsewhere); without it they are refused.
    overwrite: bool = False
    num_parts: int = 1  # share a study: predict every num_parts-th case from part_id on
    part_id: int = 0


# Called after each case with the case, its first channel and the labels written (QC overlays, say).
# (case, first channel, labels written, geometry, QC warnings: acquisition and prediction, the share of
# the bone found that the model was unsure of: kneeseg.inference.qc.uncertain_share, None without bone)
AfterCase = Callable[[InputCase, np.ndarray, np.ndarray, Geometry, list[str], "float | None"], None]


def read_case(case: InputCase) -> tuple[list[np.ndarray], Geometry]:
    """A case's channels (z, y, x) and their common geometry."""
    images: list[np.ndarray] = []
    geometry: Geometry | None = None
    for path in case.channels:
        image, g = read_image(path)
        if has_nonfinite(image, path):
            raise KneesegError(f"{path}: contains NaN or Inf values")
        if image.size and not np.any(image != image.flat[0]):  # nothing to normalise, nothing to find
            raise KneesegError(f"{path}: every voxel is {image.flat[0].item()}: a constant image cannot be segmented")
        problem = geometry.matches(g) if geometry is not None else None
        if problem:
            raise KneesegError(f"{path}: geometry does not match channel 0 ({problem})")
        images.append(image)
        geometry = geometry or g
    assert geometry is not None
    return images, geometry


def postprocessing_steps(model: TrainedModel) -> list[dict]:
    """The model's chosen post-processing (none when it has no postprocessing.json)."""
    if not model.postprocessing_file.exists():
        return []
    return checked_steps(read_json(model.postprocessing_file), model.postprocessing_file, set(model.ds.foreground_labels))


def probabilities_path(output: Path) -> Path:
    """Where ``--save-probabilities`` puts a case's class probabilities: CASE.npz beside CASE.<ext>."""
    return output.with_name(strip_ending(output) + ".npz")


def label_description_files(cases: Sequence[InputCase], how: str | None) -> list[tuple[Path, Path]]:
    """The (ITK-SNAP, Slicer) label description files that go with the plain label maps of ``cases``."""
    if how is None:
        return []
    if how not in ("folder", "beside"):
        raise ValueError(f"label_descriptions: {how!r} is not None, 'folder' or 'beside'")
    files = {label_description_paths(c.output, how == "beside", strip_ending(c.output))
             for c in cases if file_ending(c.output) not in (SEGMENTATION_ENDING, DICOM_SEG_ENDING)}
    return sorted(files)


def predict_study(model: TrainedModel, cases: list[InputCase], options: PredictionOptions,
                  after_case: AfterCase | None = None, extra_folders: Sequence[Path] = (),
                  case_files: Callable[[InputCase], Sequence[Path]] | None = None) -> list[Path]:
    """Predict ``cases`` with ``model``; returns the outputs written. ``extra_folders`` (e.g. for
    overlays) are checked with the output folders, before any prediction. ``case_files``: every file
    (or folder) written for a case, ``after_case``'s included (default: the label map and its
    probabilities): a case that fails leaves none of them."""
    from tqdm import tqdm

    o = options
    outputs = [c.output for c in cases] + [probabilities_path(c.output) for c in cases if o.save_probabilities]
    descriptions = label_description_files(cases, o.label_descriptions)
    outputs += [path for pair in descriptions for path in pair]
    refuse_overwriting_inputs([*outputs, *extra_folders], [path for c in cases for path in c.channels])
    steps = {m.folder: postprocessing_steps(m) if o.postprocess else [] for m in model.readers}  # each reader's own
    predictor = Predictor(model, o.device, o.tta, o.step, o.autocast, o.progress, o.tta_scales,  # checks scales, checkpoints
                          inverted_retry=o.qc and o.inverted_retry, second_reading=o.qc, teach_contrast=o.teach_contrast)
    for folder in {c.output.parent for c in cases} | set(extra_folders):
        ensure_writable_folder(folder)  # before any prediction: fail early, write nothing
    written, failed = [], []
    if o.progress:
        print(f"kneeseg: predicting {len(cases)} case(s) on {predictor.describe()}", file=sys.stderr)
    for case in tqdm(cases, desc="predicting", unit="case", disable=not o.progress or len(cases) < 2):
        files = case_files(case) if case_files else [case.output, probabilities_path(case.output)]
        try:
            with removed_on_failure(files):
                _predict_case(model, predictor, case, steps, o, after_case)
        except KneesegError as exc:
            if len(cases) == 1:
                raise
            tqdm.write(f"kneeseg: skipped {case.case_id}: {exc}", file=sys.stderr)
            failed.append(str(exc))
            continue
        written.append(case.output)
    for pair in descriptions:  # for the folders that received a label map
        if any(file_ending(p) not in (SEGMENTATION_ENDING, DICOM_SEG_ENDING) and p.parent == pair[0].parent for p in written):
            write_label_descriptions(pair, model.ds.labels)
    if written and o.postprocess and not model.postprocessing_file.exists():
        print(f"kneeseg: {model.folder}: no postprocessing.json, so the outputs are not post-processed (run "
              "kneeseg_find_postprocessing after training a cross-validation fold; see docs/prediction.md)", file=sys.stderr)
    if failed:
        raise KneesegError("\n".join([*failed, f"{len(failed)} of {len(cases)} cases failed (above); the other "
                                                 f"{len(written)} were written"]))
    return written


def _predict_case(model: TrainedModel, predictor: Predictor, case: InputCase, steps: dict[Path, list[dict]], o: PredictionOptions,
                  after_case: AfterCase | None) -> None:
    from tqdm import tqdm

    clock = StageClock() if o.timings else None
    with timed(clock, "read"):
        images, geometry = read_case(case)
        dicom_seg = file_ending(case.output) == DICOM_SEG_ENDING  # a DICOM series in, a SEG referencing its slices out
        sources = dicom_seg_sources(case.channels[0]) if dicom_seg else None  # what the SEG needs, checked before predicting
        if o.zero_air or (o.zero_air is None and needs_zeroed_air(model.config, images[0])):
            if o.zero_air is None:
                tqdm.write(f"kneeseg: {case.channels[0]}: the model was trained on scans whose air was stored as zeros; "
                           f"storing this scan's air as zeros first (--keep-air: as it is)", file=sys.stderr)
            images = with_air_zeroed(images)  # copies: the input stays
        warnings = acquisition_warnings(geometry, model.config, images[0])
    for warning in warnings:
        warn(f"{case.channels[0]}: {warning}")
    prediction = predictor.predict(images, geometry, keep_probabilities=o.save_probabilities, clock=clock)
    reader = model.second_reader if prediction.second_reading and model.second_reader else model
    with timed(clock, "post-processing"):
        chosen = steps[reader.folder]
        labels = apply_postprocessing(prediction.labels, chosen, geometry.spacing_zyx, geometry.direction) if chosen else prediction.labels
    with timed(clock, "qc"):
        found = prediction_warnings(labels, geometry, model.ds.foreground, model.plans.label_volumes_mm3,
                                    prediction.uncertain_share, prediction.read_inverted,
                                    prediction.unsure_as_recorded, prediction.second_reading,
                                    prediction.unsure_first_reading, prediction.contrast_taught,
                                    prediction.surer_inverted) if o.qc else []
    for warning in found:
        warn(f"{case.channels[0]}: {warning}")
    warnings += found
    with timed(clock, "write"):
        if dicom_seg:
            write_dicom_seg(case.output, labels, case.channels[0], model.ds.labels, sources)
        else:
            write_image(labels, geometry, case.output, labels=model.ds.labels)
        if o.save_probabilities:
            assert prediction.probabilities is not None
            with atomic_path(probabilities_path(case.output)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, probabilities=prediction.probabilities.astype(np.float16),
                                        labels=np.array(sorted(model.ds.labels.values())))
    if after_case is not None:
        with timed(clock, "meshes, pictures, statistics"):
            after_case(case, images[0], labels, geometry, warnings, prediction.uncertain_share)
    if clock is not None:
        tqdm.write(f"kneeseg: timings: {case.channels[0]}: {clock.line()}", file=sys.stderr)
