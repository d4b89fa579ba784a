"""The Python API behind the commands: each function composes stages; the CLIs only parse arguments.

    add_case(paths, dataset, images, label)       a corrected scan into a raw dataset (made from a model's labels if new)
    machine_profile()                             this machine, measured, for planning (or a named profile)
    plan_and_preprocess(paths, datasets)          plans for the chosen machine, and the preprocessed cache
    train(paths, fold)                            train one fold, then predict its validation cases in full
    predict(inp, out, paths=... | model_dir=...)  scans in, bone labels out (input geometry and format)
    find_postprocessing(paths)                    choose post-processing on the cross-validation predictions
    evaluate(ref, pred, output)                   metrics JSON + CSV (+ QC overlays)
    export_stl(seg, out_dir)                      one checked STL per bone (scanner LPS mm)
    export_model(model_dir, output)               a model folder as one zip to share (weights only)
    install_model(archive, paths)                 that zip, verified, into the results folder
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kneeseg.dataset.layout import KNEE_LABELS, DatasetJson, channel_files, find_dataset, foreground_labels
from kneeseg.errors import KneesegError
from kneeseg.inference.cases import InputCase, discover_cases, single_output, study_part
from kneeseg.inference.model import NoModelFound, TrainedModel, find_model, load_model
from kneeseg.inference.study import PredictionOptions, StudyOptions, predict_study
from kneeseg.io import read_image, refuse_overwriting_inputs
from kneeseg.io.atomic import remove_stale_temporaries
from kneeseg.io.protect import check_output_file, check_output_folder, holds_within, refuse_replacing, removed_on_failure, starts_with
from kneeseg.paths import KneesegPaths
from kneeseg.planning.machine import MachineProfile, named_profile
from kneeseg.planning.plans import Plans
from kneeseg.training.layout import TRAINER_NAME

# The training stack (batchgenerators, scipy.signal), matplotlib and scikit-image take seconds to
# import; the everyday command, kneeseg_predict, needs none of them, so they are imported where used.
if TYPE_CHECKING:
    from kneeseg.dataset.add_case import AddedCase
    from kneeseg.export.stl import MeshReport
    from kneeseg.planning.inherit import ParentModel
    from kneeseg.preprocessing.pipeline import PlanAndPreprocessResult
    from kneeseg.training.trainer import TrainingResult, TrainOptions


def load_plans(paths: KneesegPaths, dataset: str | int | None, plans_name: str = "kneesegPlans") -> tuple[str, Plans, DatasetJson]:
    """(dataset folder name, plans, dataset.json) from the preprocessed folder."""
    name = find_dataset(paths.preprocessed, dataset)
    folder = paths.preprocessed / name
    plans_path = folder / f"{plans_name}.json"
    if not plans_path.exists():
        raise KneesegError(f"{plans_path}: plans not found; run kneeseg_plan_and_preprocess first")
    return name, Plans.load(plans_path), DatasetJson.load(folder / "dataset.json")


def add_case(paths: KneesegPaths, dataset: str | int, images: Sequence[Path], label: Path, model_dir: Path | str | None = None,
             name: str | None = None, case_id: str | None = None, overwrite: bool = False) -> AddedCase:
    """Add a scan (``images``: one file per channel, or a DICOM series folder) and its corrected
    ``label`` (a 3D Slicer ``.seg.nrrd``, a DICOM SEG or a label map on the scan's grid) to the raw
    dataset ``dataset`` as a training case (kneeseg.dataset.add_case). A dataset that does not exist
    is created as ``DatasetNNN_<name>`` (default MyScanner) with the channels and labels of the model ``model_dir``
    (a model folder; default and 'builtin': the built-in model), the model whose predictions were
    corrected. ``case_id``: default the next free ``case_NNN``; an existing case is replaced only
    with ``overwrite``. Nothing is half-added: a failure leaves the dataset as it was."""
    from kneeseg.dataset.add_case import add_case as add_to_dataset
    from kneeseg.dataset.add_case import existing_dataset

    template = None
    if existing_dataset(paths.raw, dataset) is None:
        template = resolve_model(model_dir=Path(str(model_dir or "builtin"))).ds
    return add_to_dataset(paths.raw, dataset, [Path(p) for p in images], Path(label), template, name, case_id, overwrite)


def machine_profile(machine: str = "measure", cpu_threads: int | None = None, cpu_gflops: float | None = None,
                    cpu_precision: str | None = None) -> MachineProfile:
    """What ``3d_cpu`` is planned for: this machine, measured (cores available to this process, and
    a real training step timed in fp32 and bf16, a few seconds; kneeseg.training.throughput), or a
    named profile ('reference'). ``cpu_threads``, ``cpu_gflops`` and ``cpu_precision`` ('bf16' or
    'none' for fp32) replace what was measured or named; with ``cpu_gflops`` nothing is timed."""
    if machine != "measure":
        return named_profile(machine).overridden(cpu_threads, cpu_gflops, cpu_precision)
    if cpu_gflops is not None:
        from kneeseg.hardware import available_cores, cpu_model, usable_autocast

        precision = cpu_precision or usable_autocast("bf16", "cpu")
        return MachineProfile("set by hand", cpu_model(), cpu_threads or available_cores(), precision, cpu_gflops)
    from kneeseg.training.throughput import CPU_PRECISIONS, measure_machine

    return measure_machine(cpu_threads, (cpu_precision,) if cpu_precision else CPU_PRECISIONS)


def recorded_machine(paths: KneesegPaths, dataset: str | int | None, plans_name: str = "kneesegPlans") -> MachineProfile | None:
    """The machine profile the dataset's existing plans were made for, or None (no plans, or unreadable)."""
    try:
        plans_path = paths.preprocessed / find_dataset(paths.raw, dataset) / f"{plans_name}.json"
        return Plans.load(plans_path).hardware.machine if plans_path.exists() else None
    except KneesegError:
        return None  # the planning that follows says what is wrong


@dataclass
class PlanOptions:
    """What to plan for and what to preprocess (kneeseg_plan_and_preprocess's options)."""

    device: str = "cpu"  # the recommended configuration is the one for this device
    configurations: list[str] | None = None  # to preprocess; default: the one recommended for ``device``
    machine: str | None = None  # "measure", a named profile, or None: the machine the existing plans record, else measured
    cpu_threads: int | None = None  # these three replace what was measured, named or recorded
    cpu_gflops: float | None = None
    cpu_precision: str | None = None  # "bf16" | "none" (fp32)
    gpu_memory_gb: float = 8.0
    cpu_training_hours: float = 1.0
    cpu_spacing: list[float] | None = None  # z, y, x mm of 3d_cpu instead of the planner's choice
    plans_name: str = "kneesegPlans"
    num_processes: int = 1
    seed: int = 0
    verify: bool = True
    preprocess: bool = True  # False: fingerprint and plans only
    progress: bool = True
    # A trained model ('builtin' or a model folder) whose configuration the plans take as it is, for
    # fine-tuning it (kneeseg_train --pretrained): nothing is measured or planned (kneeseg.planning.inherit)
    plans_from: str | None = None


def parent_model(given: str | Path) -> tuple[TrainedModel, ParentModel]:
    """The model ``given`` ('builtin' or a model folder) as a parent for plans and weights."""
    from kneeseg.planning.inherit import ParentModel

    model = resolve_model(model_dir=Path(str(given)))
    return model, ParentModel(str(given), model.plans, model.config.name, model.ds)


def plan_and_preprocess(paths: KneesegPaths, datasets: Sequence[str | int | None] | None = None, options: PlanOptions | None = None,
                        on_machine: Callable[[MachineProfile, bool], None] | None = None,
                        on_planned: Callable[[PlanAndPreprocessResult], None] | None = None) -> list[PlanAndPreprocessResult]:
    """Fingerprint, plan and preprocess each of ``datasets`` (default: the only one in the raw folder).

    ``3d_cpu`` is planned for the machine the dataset's existing plans record, if any and
    ``options.machine`` is None: planning again (e.g. to preprocess another configuration) must not
    move a borderline plan and orphan its cache and checkpoints. Otherwise for this machine, measured
    once for all datasets, or a named profile. ``on_machine(machine, recorded)`` hears which before a
    dataset is planned, ``on_planned(result)`` after. With ``options.plans_from`` each dataset takes
    that model's configuration as it is (its machine record included; no machine is measured), and a
    dataset with other channels or labels than the model's is refused."""
    from kneeseg.planning.plans import HardwareTarget
    from kneeseg.preprocessing import pipeline

    options = options or PlanOptions()
    overrides = (options.cpu_threads, options.cpu_gflops, options.cpu_precision)
    measured: MachineProfile | None = None
    results = []
    if options.plans_from is not None:
        sized = PlanOptions()  # sizes other than the defaults would be ignored too
        ignored = [flag for flag, value in (("--machine", options.machine), ("--cpu-threads", options.cpu_threads),
                                            ("--cpu-gflops", options.cpu_gflops), ("--cpu-precision", options.cpu_precision),
                                            ("--cpu-spacing", options.cpu_spacing)) if value is not None]
        ignored += [flag for flag, value, default in (
            ("--cpu-training-hours", options.cpu_training_hours, sized.cpu_training_hours),
            ("--gpu-memory-gb", options.gpu_memory_gb, sized.gpu_memory_gb)) if value != default]
        if ignored:
            raise KneesegError(f"--plans-from {options.plans_from}: the configuration is the model's as it is; "
                               f"{', '.join(ignored)} would be ignored (give one or the other)")
        _, parent = parent_model(options.plans_from)
        for dataset in datasets or [None]:
            result = pipeline.plan_and_preprocess(
                paths, dataset, options.configurations, options.device, None, options.plans_name, options.num_processes,
                options.seed, options.verify, options.preprocess, options.progress, parent=parent)
            if on_planned is not None:
                on_planned(result)
            results.append(result)
        return results
    for dataset in datasets or [None]:
        machine = recorded_machine(paths, dataset, options.plans_name) if options.machine is None else None
        recorded = machine is not None
        if machine is not None:
            machine = machine.overridden(*overrides)
        else:
            measured = measured or machine_profile(options.machine or "measure", *overrides)
            machine = measured
        if on_machine is not None:
            on_machine(machine, recorded)
        hardware = HardwareTarget(machine, options.gpu_memory_gb, options.cpu_training_hours)
        result = pipeline.plan_and_preprocess(
            paths, dataset, options.configurations, options.device, hardware, options.plans_name, options.num_processes,
            options.seed, options.verify, options.preprocess, options.progress, options.cpu_spacing,
        )
        if on_planned is not None:
            on_planned(result)
        results.append(result)
    return results


def train(paths: KneesegPaths, fold: str = "0", dataset: str | int | None = None, configuration: str | None = None,
          plans_name: str = "kneesegPlans", options: TrainOptions | None = None, predict_validation: bool = True,
          trainer: str = TRAINER_NAME) -> TrainingResult:
    """Train one fold with ``trainer`` (the default or a variant, kneeseg.training.variants), then
    (main process) predict its validation cases in full into ``fold_N/validation`` so that
    kneeseg_find_postprocessing has cross-validation predictions to choose from. With
    ``options.pretrained`` ('builtin' or a model folder) the fold is fine-tuned from that model's
    weights with the fine-tuning schedule (kneeseg.training.finetune; plan with ``plans_from`` first)."""
    from dataclasses import replace

    from kneeseg.training.trainer import TrainOptions
    from kneeseg.training.variants import trainer_class

    options = replace(options or TrainOptions(), fold=str(fold))  # a copy: the caller's options stay as given
    name, plans, ds = load_plans(paths, dataset, plans_name)
    config = plans.configuration(configuration or plans.recommended_configuration(options.device))
    result = trainer_class(trainer)(plans, config, ds, paths.preprocessed, paths.results, options).run()
    if predict_validation and result.main_process and options.fold != "all":
        raw = paths.raw / name
        cases = [InputCase(c, channel_files(raw / "imagesTr", c, ds.num_channels, ds.file_ending),
                           result.fold_dir / "validation" / f"{c}{ds.file_ending}") for c in result.validation_cases]
        predict_study(load_model(result.model_dir, [options.fold]), cases,
                      PredictionOptions(device=options.device, postprocess=False, progress=options.progress, qc=False))
    return result


def resolve_model(paths: KneesegPaths | None = None, model_dir: Path | None = None, dataset=None, configuration=None,
                  folds: list[str] | None = None, device: str = "cpu", trainer: str | None = None,
                  builtin_fallback: bool = False) -> TrainedModel:
    """The model folder ``model_dir`` ('builtin': the model that ships with kneeseg, kneeseg.models),
    else the one trained model in ``paths.results`` (narrowed by dataset, configuration and trainer;
    the configuration the plans recommend for ``device`` when several are trained). With
    ``builtin_fallback`` (prediction), a results folder without any model folder gives the built-in
    model when nothing narrows the search (-d, -c, -tr, -f), saying so on stderr."""
    from kneeseg.models import MAKE_MODEL_HINT, builtin_model_dir, model_folder

    if model_dir is not None:
        ignored = [flag for flag, value in (("-d", dataset), ("-c", configuration), ("-tr", trainer)) if value is not None]
        if ignored:  # the folder is the model: a dataset, configuration or trainer beside it could not be honoured
            raise KneesegError(f"{model_dir}: -m names the model folder; {', '.join(ignored)} would be ignored (give one or the other)")
        return load_model(model_folder(model_dir, "-m"), folds)
    if paths is None:
        raise KneesegError("give a model folder (-m) or a results folder")
    try:
        return find_model(paths.results, dataset, configuration, device, folds, trainer=trainer)
    except NoModelFound as exc:
        builtin = builtin_model_dir()
        narrowed = any(v is not None for v in (dataset, configuration, trainer, folds))
        if not builtin_fallback or narrowed or any(paths.results.glob("Dataset*/*__*__*")):  # a training under way is no fallback case
            raise
        if builtin is None:
            raise KneesegError(f"{exc}, and {MAKE_MODEL_HINT}") from exc
        print(f"kneeseg: no trained model in {paths.results}; using the built-in model ({builtin.name}: knee bones "
              f"in 0.3 T 3D SST2 MRI; see {builtin / 'MODEL_CARD.md'})", file=sys.stderr)
        return load_model(builtin, folds)


def _attach_second_reader(model: TrainedModel, given: str = "auto") -> TrainedModel:
    """``model`` with the second reader ``given`` names (kneeseg.inference.predictor): 'auto', the
    built-in model's any-contrast model for the built-in model (kneeseg.models) and none for others;
    'none'; or a model folder ('builtin' and 'builtin-any-contrast' included) of the same labels."""
    from kneeseg.inference.model import with_second_reader
    from kneeseg.models import model_folder, second_reader_dir

    if given == "none":
        return model
    folder = second_reader_dir(model.folder) if given == "auto" else model_folder(given, "--second-reader")
    return model if folder is None else with_second_reader(model, folder)


def predict(inp: Path, out: Path, paths: KneesegPaths | None = None, model_dir: Path | None = None, *,
            dataset: str | int | None = None, configuration: str | None = None, folds: list[str] | None = None,
            trainer: str | None = None, options: PredictionOptions | None = None, study: StudyOptions | None = None) -> list[Path]:
    """Predict a file, a folder of scans, a DICOM series folder or a folder tree of DICOM series
    (kneeseg.inference.cases) with the model folder ``model_dir`` or the model trained in
    ``paths.results`` (:func:`resolve_model`: ``dataset``, ``configuration``, ``trainer`` narrow the
    search, ``folds`` are ensembled); returns the outputs written. ``options`` (PredictionOptions):
    how each scan is predicted; ``study`` (StudyOptions): what is written besides the label maps and
    how a folder run is shared and resumed. Neither object is changed.

    A folder run is resumable (kneeseg.inference.record): ``study.csv`` in the output folder records
    which input made which output with which model and options, and a rerun skips the cases already
    made by the same model with the same options (``overwrite``: redo them all). ``num_parts``/
    ``part_id``: predict only every ``num_parts``-th case from ``part_id`` on, so that several
    processes or machines share a study (record ``study_partKofN.csv``). One run writes into a study
    folder at a time (the parts of a shared study together): a second is refused.

    Every output path is checked before the model is read, and every file the run would replace
    before the networks are loaded (kneeseg.inference.outputs): a file kneeseg has no record of
    making (a label map drawn by hand, a dataset's labelsTr, an existing single output file) is
    refused unless ``overwrite``. A failed run leaves nothing new: a case that fails in a study
    leaves none of its files.

    ``output_type`` 'dicom-seg' (or ``out`` ending in ``.dcm``), for DICOM series input: a DICOM SEG
    per series that references its slices (kneeseg.io.dicomseg). ``out`` ending in ``.seg.nrrd``
    gives a 3D Slicer segmentation (named, coloured segments); plain label maps get an ITK-SNAP
    label description and a Slicer colour table beside them (``labels.itksnap.txt``, ``labels.ctbl``
    in an output folder; ``STEM.itksnap.txt``, ``STEM.ctbl`` beside a single output file).
    ``statistics``: ``CASE.statistics.json`` per case (bone volumes, components, bounding boxes, QC
    warnings; kneeseg.export.statistics) and, for a folder of scans, ``statistics.csv`` in the output
    folder (``statistics_partKofN.csv`` for a part of a study), with each bone's surface area when
    meshes are made. ``stl``: a folder for checked, printable STL bones (kneeseg.export.stl):
    ``stl/<bone>.stl`` for a single output file, ``stl/<case>/<bone>.stl`` for a folder run; at most
    ``stl_faces`` triangles each. ``overlays``: a folder for one QC PNG per case.

    ``tta_scales``: also predict on grids at these multiples of the plan's spacing (0.75-1.3) and
    average the probabilities (one sliding window per scale: slower). ``zero_air``: store each scan's
    air as zeros first (``kneeseg.fingerprint.air.air_mask``): None (default) does so when the model
    was trained on scans whose air was stored as zeros and the scan's is not, saying so on stderr;
    True always; False never. ``second_reader``: the model that reads a scan the model is unsure of
    as recorded and inverted (:func:`_attach_second_reader`; the built-in model's any-contrast model by default);
    with ``options.teach_contrast`` (default) it also teaches the model the scan's contrast and the labels are
    both readings' (kneeseg.inference.contrast)."""
    from kneeseg.inference.outputs import StudyLock, check_output_paths

    inp, out = Path(inp), Path(out)
    options, study = options or PredictionOptions(), study or StudyOptions()
    check_face_budget(study.stl_faces)
    check_output_paths(inp, out, study)
    model = resolve_model(paths, model_dir, dataset, configuration, folds, options.device, trainer, builtin_fallback=True)
    model = _attach_second_reader(model, options.second_reader) if options.qc else model
    # The reader itself, not how it was named, goes into a study's record (kneeseg.inference.record)
    options = replace(options, second_reader=str(model.second_reader.folder.resolve()) if model.second_reader else "none")
    cases = study_part(discover_cases(inp, out, model.ds.num_channels, study.output_type == "dicom-seg"), study.num_parts, study.part_id)
    if not cases:
        print(f"kneeseg: part {study.part_id} of {study.num_parts} holds none of the cases of {inp}", file=sys.stderr)
        return []
    single_file = single_output(out)
    options = replace(options, label_descriptions="beside" if single_file else "folder")  # a copy: the caller's stays
    part = "" if study.num_parts == 1 else f"_part{study.part_id}of{study.num_parts}"
    folders = [out.parent if single_file else out, *(Path(f) for f in (study.overlays, study.stl) if f is not None)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(removed_on_failure(folders))  # the folders this run made, when it fails and leaves them empty
        if not single_file:
            stack.enter_context(StudyLock(out, part))
        return _predict_cases(model, cases, out, options, study, part, folders)


def _predict_cases(model: TrainedModel, cases: list[InputCase], out: Path, options: PredictionOptions, study: StudyOptions,
                   part: str, folders: list[Path]) -> list[Path]:
    """:func:`predict` once its output folder is held: the record read, the cases done skipped, the
    files to replace checked, the others predicted."""
    from kneeseg.export.statistics import StudyStatistics
    from kneeseg.inference.outputs import PredictionFiles
    from kneeseg.inference.record import StudyRecord, study_signature

    single_file = single_output(out)
    inputs = [path for c in cases for path in c.channels]
    record = None
    if not single_file:
        signature = study_signature(model, {"options": {k: v for k, v in vars(options).items() if k not in ("progress", "timings")},
                                            "statistics": study.statistics, "overlays": study.overlays is not None,
                                            "stl": None if study.stl is None else str(Path(study.stl).resolve()),
                                            "stl_faces": study.stl_faces})
        record = StudyRecord(out, f"study{part}.csv", signature, cases)
    files = PredictionFiles(study, list(model.ds.foreground), options.save_probabilities, options.label_descriptions,
                            out / f"statistics{part}.csv" if study.statistics and not single_file else None, record)
    done = [] if record is None or study.overwrite else [c for c in cases if record.done(c, files.made(c))]
    skipped = {c.case_id for c in done}
    todo = [c for c in cases if c.case_id not in skipped]
    refuse_overwriting_inputs([*(p for c in todo for p in files.written(c)), *files.of_study(todo)], inputs)
    files.refuse_replacing(todo)
    for folder in [*folders, *(files.mesh_folder(c) for c in todo if study.stl)]:
        remove_stale_temporaries(folder)  # of a run killed before it could remove them
    if done:
        print(f"kneeseg: {len(done)} of {len(cases)} case(s) already made by this model with these options in {out}: "
              "skipped (--overwrite redoes them)", file=sys.stderr)
    hooks: list = []
    if study.overlays is not None:
        from kneeseg.export.overlays import save_overlay

        overlays = Path(study.overlays)
        hooks.append(lambda case, image, labels, geometry, *_: save_overlay(
            image, labels, geometry.spacing_zyx, overlays / f"{case.case_id}.png", case.case_id))
    meshes = None
    if study.stl is not None:
        from kneeseg.export.stl import StudyMeshes

        meshes = StudyMeshes(Path(study.stl), model.ds.foreground, not single_file, study.stl_faces)
        hooks.append(meshes)  # before the statistics: they take its surface areas and warnings
    table = None
    if study.statistics:
        table = StudyStatistics(model.folder, model.ds.foreground, files.statistics_csv, done, meshes.areas if meshes else None)
        hooks.append(table)
    if record is not None:
        record.keep(done)
        record.begin(todo)  # a run killed midway leaves rows that say these cases' files are kneeseg's
        hooks.append(lambda case, *_: record.add(case))  # last: a case is recorded once all its files are written

    def after_case(case, image, labels, geometry, warnings, uncertain_share):
        for hook in hooks:
            hook(case, image, labels, geometry, warnings, uncertain_share)

    try:
        if not todo:
            return []
        written = predict_study(model, todo, options, after_case if hooks else None, folders[1:], files.written)
        return written + ([p for p in meshes.written if p.exists()] if meshes else [])
    finally:
        if table is not None:
            table.finish()
        if record is not None:
            record.end()


def check_face_budget(faces: int | None) -> None:
    if faces is not None and faces < 4:
        raise KneesegError(f"--stl-faces {faces}: a closed mesh needs at least 4 triangles")


def find_postprocessing(paths: KneesegPaths, dataset=None, configuration: str | None = None, model_dir: Path | None = None,
                        device: str = "cpu", progress: bool = True, trainer: str | None = None) -> dict:
    """Choose post-processing on the folds' validation predictions; writes postprocessing.json."""
    from kneeseg.postprocessing.chooser import choose_postprocessing

    model = resolve_model(paths, model_dir, dataset, configuration, None, device, trainer)
    raw_labels = paths.raw / model.plans.dataset_name / "labelsTr"
    pairs = []
    for pred in sorted(model.folder.glob("fold_*/validation/*")):
        ref = raw_labels / pred.name
        if not ref.exists():
            raise KneesegError(f"{ref}: reference label missing for cross-validation prediction {pred}")
        pairs.append((ref, pred))
    if not pairs:
        raise KneesegError(f"{model.folder}: no cross-validation predictions (fold_*/validation); train folds first")
    return choose_postprocessing(pairs, model.ds.foreground, model.postprocessing_file, progress)


def evaluate(ref: Path, pred: Path, output: Path | None = None, labels: dict[str, int] | None = None,
             overlays: Path | None = None, images: Path | None = None, progress: bool = True, *,
             dataset_json: Path | None = None, overwrite: bool = False) -> dict:
    """Metrics per case and bone (+ all bones) in ``output`` (JSON) and the same name ending in
    .csv; QC overlays in ``overlays``, drawn on ``images`` (CASE_0000.*) when given. ``labels`` (else
    those of ``dataset_json``, else femur, tibia, patella): the structures evaluated.

    Every output is checked before anything is computed: none may be an input (``dataset_json``
    included), and a file that a previous kneeseg_evaluate did not write is not replaced unless
    ``overwrite``. The summary is written after the overlays, and a failure leaves nothing new."""
    from kneeseg.evaluation.evaluate import evaluate as evaluate_folders
    from kneeseg.evaluation.evaluate import is_summary, pair_files, summary_files, write_summary

    if images is not None and overlays is None:
        raise KneesegError(f"--images {images}: the scans are only used to draw overlays; give --overlays DIR too")
    outputs = summary_files(Path(output)) if output else []
    refuse_overwriting_inputs([*outputs, *([Path(overlays)] if overlays else [])], [p for p in (ref, pred, images, dataset_json) if p])
    for path in outputs:
        check_output_file(path)
    if labels is None and dataset_json is not None:
        labels = DatasetJson.load(Path(dataset_json)).foreground
    pictures: list[Path] = []
    if overlays:
        from kneeseg.export.overlays import OVERLAY_MARK, evaluation_overlay_paths

        check_output_folder(Path(overlays))
        pictures = [p for case, _, _ in pair_files(Path(ref), Path(pred)) for p in evaluation_overlay_paths(Path(overlays), case)]
        refuse_replacing(pictures, lambda path: holds_within(path, OVERLAY_MARK), overwrite)
    refuse_replacing(outputs, is_summary, overwrite)
    summary = evaluate_folders(Path(ref), Path(pred), labels or foreground_labels(KNEE_LABELS), None, progress)
    with removed_on_failure([*pictures, *([Path(overlays)] if overlays else []), *outputs]):
        for folder in {*(p.parent for p in outputs), *([Path(overlays)] if overlays else [])}:
            remove_stale_temporaries(folder)  # of a run killed before it could remove them
        if overlays:
            from kneeseg.export.overlays import save_evaluation_overlays

            save_evaluation_overlays(summary, Path(overlays), images)
        if output:
            write_summary(Path(output), summary)
    return summary


def export_stl(segmentation: Path, out_dir: Path, labels: dict[str, int] | None = None, smoothing_iterations: int = 20,
               max_faces: int | None = None, overwrite: bool = False) -> list[MeshReport]:
    """One watertight, smoothed STL per bone of a label image (``out_dir/<bone>.stl``), in scanner LPS
    millimetres, as 3D Slicer reads STL by default. Each mesh is checked with trimesh (edge-manifold,
    watertight, consistent winding, positive volume, one shell per piece) and repaired where needed;
    stray pieces under 1% of the largest are left out; at most ``max_faces`` triangles each. See
    kneeseg.export.stl. An STL file kneeseg did not write is not replaced unless ``overwrite``; a
    failure leaves nothing new."""
    from kneeseg.export.stl import STL_MARK
    from kneeseg.export.stl import export_stl as export_meshes

    check_face_budget(max_faces)
    labels = labels or foreground_labels(KNEE_LABELS)
    out_dir = Path(out_dir)
    refuse_overwriting_inputs([out_dir / f"{name}.stl" for name in labels], [segmentation])
    check_output_folder(out_dir)
    seg, geometry = read_image(segmentation)
    unknown = sorted(v.item() for v in np.unique(seg) if v != 0 and v not in labels.values())
    if unknown:  # a mesh per named bone would leave these voxels out without a word
        many = len(unknown) > 8  # a scan rather than a label map: its values are not worth a line each
        shown = "[" + ", ".join(f"{v:g}" for v in unknown[:8]) + (f", ...] ({len(unknown)} values)" if many else "]")
        raise KneesegError(f"{segmentation}: holds label value(s) {shown}, not among the labels {labels} "
                           f"(give --dataset-json with this segmentation's labels{'; is it a scan?' if many else ''})")
    if not np.any(np.isin(seg, list(labels.values()))):
        raise KneesegError(f"{segmentation}: contains none of the labels {labels}")
    meshes = [out_dir / f"{name}.stl" for name, value in labels.items() if value != 0 and np.any(seg == value)]
    refuse_replacing(meshes, lambda path: starts_with(path, STL_MARK), overwrite)
    with removed_on_failure([*meshes, out_dir]):
        remove_stale_temporaries(out_dir)  # of a run killed before it could remove them
        return export_meshes(seg, geometry, out_dir, labels, smoothing_iterations, max_faces)


def export_model(model_dir: Path, output: Path, folds: list[str] | None = None, half: bool = True,
                 overwrite: bool = False) -> dict:
    """A trained model folder as one zip to share: plans, dataset.json, model.json, post-processing,
    model card and, per fold, the network's weights only (float16 unless ``half`` is False), with a
    manifest of sha256 sums; returns the manifest. See kneeseg.inference.archive."""
    from kneeseg.inference.archive import export_model as export_archive

    return export_archive(Path(model_dir), Path(output), folds, half, overwrite)


def install_model(archive: Path, paths: KneesegPaths, overwrite: bool = False) -> Path:
    """Verify a model archive whole, then unpack it as
    ``paths.results/DatasetNNN_Name/TRAINER__PLANS__CONFIG`` (an installed model there is replaced
    only if ``overwrite``); returns that folder, which kneeseg_predict then finds like a trained one."""
    from kneeseg.inference.archive import install_model as install_archive

    return install_archive(Path(archive), paths.results, overwrite)
