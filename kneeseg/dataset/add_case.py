"""One corrected scan into a raw dataset (kneeseg_add_case): the last step before fine-tuning.

The scan (files, one per channel, or a DICOM series folder) goes to ``imagesTr/CASE_000N<ending>``
and its corrected label (kneeseg.dataset.label_sources: a 3D Slicer segmentation, a DICOM SEG or a
label map, on the scan's grid) to ``labelsTr/CASE<ending>``, both with the scan's geometry, and
``numTraining`` follows. A dataset that does not exist yet is made, its ``dataset.json`` taking the
channels and labels of a model's (the model whose predictions were corrected).

Nothing is half-added: every input is read and checked before anything is written, the files are
written into a hidden staging folder of the dataset and renamed into place together, and a failure
removes whatever the command made (a dataset it created included). An existing case is replaced
only with ``overwrite``; one command adds to a dataset at a time (a lock in its folder).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kneeseg.dataset.label_sources import read_label_source
from kneeseg.dataset.layout import (
    DATASET_FOLDER,
    DatasetJson,
    channel_files,
    dataset_folder_name,
    find_dataset,
    list_cases,
    matching_datasets,
)
from kneeseg.errors import KneesegError
from kneeseg.io import Geometry, read_image, refuse_overwriting_inputs, write_image
from kneeseg.io.lock import FileLock
from kneeseg.io.nifti import has_nonfinite
from kneeseg.io.protect import removed_on_failure

CASE_PREFIX = "case_"  # automatic case ids: case_000, case_001, ...
DEFAULT_NAME = "MyScanner"  # of a dataset created without --name
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass
class AddedCase:
    dataset_dir: Path
    case_id: str
    images: list[Path]
    label: Path
    created: bool  # the dataset was made by this command
    num_training: int
    voxels: dict[str, int] = field(default_factory=dict)  # per label name, in the label written


def existing_dataset(raw: Path, dataset: str | int) -> str | None:
    """The folder name of the dataset ``dataset`` (an id, a short or a full name) in ``raw``, or None."""
    return find_dataset(raw, dataset) if matching_datasets(raw, dataset) else None


def new_dataset_name(raw: Path, dataset: str | int, name: str | None) -> str:
    """The folder name for a dataset to create: ``-d 950 [--name X]`` or ``-d Dataset950_X``; a number
    another dataset in ``raw`` has is refused (a later ``-d 950`` would not know which one)."""
    text = str(dataset)
    full = DATASET_FOLDER.match(text)
    if not full and not text.isdigit():
        raise KneesegError(f"dataset '{dataset}': not found; to create it give its number (-d 950) or its folder name "
                           "(-d Dataset950_MyScanner)")
    if full and name is not None and full.group(2) != name:
        raise KneesegError(f"-d {text} --name {name}: two names for the dataset to create; give one")
    number = int(full.group(1)) if full else int(text)
    if taken := matching_datasets(raw, number):
        raise KneesegError(f"{raw / taken[0]}: dataset number {number} is taken; give -d {taken[0]} to add to it, "
                           "or another number")
    return text if full else dataset_folder_name(number, name or DEFAULT_NAME)


def next_case_id(images_dir: Path, file_ending: str) -> str:
    """``case_NNN`` after the highest of that form in ``images_dir`` (``case_000`` in an empty one)."""
    numbers = [int(c[len(CASE_PREFIX):]) for c in list_cases(images_dir, file_ending)
               if c.startswith(CASE_PREFIX) and c[len(CASE_PREFIX):].isdigit()]
    return f"{CASE_PREFIX}{max(numbers, default=-1) + 1:03d}"


def _read_channels(images: Sequence[Path], ds: DatasetJson, where: str) -> tuple[list[np.ndarray], Geometry]:
    if len(images) != ds.num_channels:
        raise KneesegError(f"{where}: dataset has {ds.num_channels} channel(s) ({', '.join(ds.channel_names.values())}); "
                           f"got {len(images)} image(s)")
    arrays, grid = [], None
    for path in images:
        array, geometry = read_image(path)
        if has_nonfinite(array, path):
            raise KneesegError(f"{path}: contains NaN or Inf values")
        if grid is not None and (problem := grid.matches(geometry)):
            raise KneesegError(f"{path}: geometry does not match {images[0]} ({problem})")
        arrays.append(array)
        grid = grid or geometry
    assert grid is not None
    return arrays, grid


def add_case(raw: Path, dataset: str | int, images: Sequence[Path], label: Path, template: DatasetJson | None = None,
             name: str | None = None, case_id: str | None = None, overwrite: bool = False) -> AddedCase:
    """Add the scan ``images`` (one per channel) with its corrected ``label`` to ``dataset`` in the raw
    folder ``raw``; a dataset that does not exist is created (``DatasetNNN_<name>``) with the channels
    and labels of ``template`` (a model's dataset.json; ``name`` default MyScanner). ``case_id``: default
    the next ``case_NNN``."""
    raw, images, label = Path(raw), [Path(p) for p in images], Path(label)
    if case_id is not None and not _CASE_ID.match(case_id):
        raise KneesegError(f"--case {case_id!r}: use letters, digits, '_' and '-' (starting with a letter or digit)")
    folder = existing_dataset(raw, dataset)
    created = folder is None
    if folder is not None and name is not None and DATASET_FOLDER.match(folder).group(2) != name:  # type: ignore[union-attr]
        raise KneesegError(f"{raw / folder}: -d {dataset} is this dataset, not one named {name}; leave out --name to add "
                           "to it, or give another number to create one")
    if folder is None:
        folder = new_dataset_name(raw, dataset, name)
        if template is None:
            raise KneesegError(f"{raw / folder}: dataset not found, and no model was given whose labels it would take")
        ds = DatasetJson(channel_names=dict(template.channel_names), labels=dict(template.labels), numTraining=0,
                         file_ending=".nii.gz", name=folder, description="corrected predictions, for fine-tuning (kneeseg_add_case)")
    else:
        ds = DatasetJson.load(raw / folder / "dataset.json")
    dataset_dir = raw / folder
    arrays, grid = _read_channels(images, ds, str(dataset_dir))
    labels = read_label_source(label, images[0], grid, ds.labels)
    lock = FileLock(dataset_dir / ".kneeseg_add_case.lock")
    with removed_on_failure([dataset_dir]):  # a dataset this command made goes again when it fails
        if not lock.acquire():
            raise KneesegError(f"{dataset_dir}: another kneeseg_add_case is adding to this dataset (process {lock.holder() or '?'})")
        try:
            return _write_case(dataset_dir, ds, images, label, arrays, grid, labels, case_id, overwrite, created)
        finally:
            lock.release()


def _write_case(dataset_dir: Path, ds: DatasetJson, images: list[Path], label: Path, arrays: list[np.ndarray], grid: Geometry,
                labels: np.ndarray, case_id: str | None, overwrite: bool, created: bool) -> AddedCase:
    images_dir, labels_dir = dataset_dir / "imagesTr", dataset_dir / "labelsTr"
    case_id = case_id or next_case_id(images_dir, ds.file_ending)
    targets = [*channel_files(images_dir, case_id, ds.num_channels, ds.file_ending), labels_dir / f"{case_id}{ds.file_ending}"]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise KneesegError(f"{existing[0]}: case '{case_id}' is already in {dataset_dir.name}; use --overwrite to replace it "
                           "(or --case NAME for another case)")
    refuse_overwriting_inputs(targets, [*images, label])
    cases = set(list_cases(images_dir, ds.file_ending)) | {case_id}
    ds.numTraining = len(cases)
    json_path = dataset_dir / "dataset.json"
    with removed_on_failure([*targets, json_path, images_dir, labels_dir]):
        staging = Path(tempfile.mkdtemp(prefix=".kneeseg_add_case.", dir=dataset_dir))
        try:
            staged = [staging / p.name for p in targets]
            for array, path in zip(arrays, staged):
                write_image(array, grid, path)
            write_image(labels, grid, staged[-1])
            ds.save(staging / "dataset.json")
            images_dir.mkdir(exist_ok=True)
            labels_dir.mkdir(exist_ok=True)
            try:
                for target in existing:  # the replaced case is kept aside until all of the new one is in place
                    os.replace(target, staging / f"replaced.{target.name}")
                for source, target in [*zip(staged, targets), (staging / "dataset.json", json_path)]:
                    os.replace(source, target)
            except BaseException:
                for target in existing:  # the case that was there comes back as it was (the same files)
                    if (staging / f"replaced.{target.name}").exists():
                        os.replace(staging / f"replaced.{target.name}", target)
                raise
        finally:
            if not any(staging.glob("replaced.*")):  # a replaced file that could not be put back stays there
                shutil.rmtree(staging, ignore_errors=True)
    voxels = {name: int(np.count_nonzero(labels == value)) for name, value in ds.labels.items() if value != 0}
    return AddedCase(dataset_dir, case_id, targets[:-1], targets[-1], created, ds.numTraining, voxels)
