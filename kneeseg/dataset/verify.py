"""Checks a raw dataset before anything is written: one line per problem, naming the file."""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import numpy as np

from kneeseg.dataset.layout import DatasetJson, RawCase, training_cases
from kneeseg.errors import KneesegError
from kneeseg.io import read_image
from kneeseg.io.nifti import has_nonfinite


def _check_case(job) -> list[str]:
    case, allowed = job
    problems: list[str] = []
    geometries = []
    for path in case.images:
        if not path.exists():
            problems.append(f"{path}: missing channel file")
            continue
        try:
            image, geometry = read_image(path)
        except KneesegError as exc:
            problems.append(str(exc))
            continue
        if has_nonfinite(image, path):
            problems.append(f"{path}: contains NaN or Inf values")
        geometries.append((path, geometry))
    if case.label is None or not case.label.exists():
        problems.append(f"{case.label}: missing label file for case '{case.case_id}'")
    else:
        try:
            labels, geometry = read_image(case.label)
        except KneesegError as exc:
            return problems + [str(exc)]
        if has_nonfinite(labels, case.label):
            problems.append(f"{case.label}: contains NaN or Inf values")
        else:
            values = set(np.unique(labels).tolist())
            extra = sorted(v for v in values if v not in allowed)
            if extra:
                problems.append(f"{case.label}: label values {extra} are not in dataset.json labels {sorted(allowed)}")
        geometries.append((case.label, geometry))
    if geometries:
        ref_path, ref = geometries[0]
        for path, geometry in geometries[1:]:
            diff = ref.matches(geometry)
            if diff:
                problems.append(f"{path}: geometry does not match {ref_path.name} ({diff})")
    return problems


def verify_dataset(dataset_dir: Path, num_processes: int = 1, progress: bool = True) -> tuple[DatasetJson, list[RawCase]]:
    """Return (dataset.json, cases) if the dataset is sound; else raise KneesegError listing every problem."""
    from tqdm import tqdm

    ds = DatasetJson.load(dataset_dir / "dataset.json")
    cases = training_cases(dataset_dir, ds)
    problems: list[str] = []
    if not cases:
        raise KneesegError(f"{dataset_dir / 'imagesTr'}: no training images named CASE_0000{ds.file_ending}")
    if len(cases) != ds.numTraining:
        problems.append(f"{dataset_dir / 'dataset.json'}: numTraining is {ds.numTraining} but imagesTr holds {len(cases)} cases")
    label_dir = dataset_dir / "labelsTr"
    known = {c.case_id for c in cases}
    if label_dir.is_dir():
        for p in sorted(label_dir.iterdir()):
            if p.name.endswith(ds.file_ending) and p.name[: -len(ds.file_ending)] not in known:
                problems.append(f"{p}: label without an image in imagesTr")
    channels = {f"_{c:04d}" for c in range(ds.num_channels)}
    for p in sorted((dataset_dir / "imagesTr").iterdir()):
        name = p.name[: -len(ds.file_ending)] if p.name.endswith(ds.file_ending) else None
        if name is not None and name[-5:] not in channels:
            problems.append(f"{p}: channel {name[-4:]} is not in dataset.json channel_names ({len(channels)} channel(s))")
    allowed = set(ds.labels.values())
    jobs = [(c, allowed) for c in cases]
    if num_processes > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = list(tqdm(pool.imap(_check_case, jobs), total=len(jobs), desc="verifying", disable=not progress))
    else:
        results = [_check_case(j) for j in tqdm(jobs, desc="verifying", disable=not progress)]
    for r in results:
        problems.extend(r)
    if problems:
        raise KneesegError("\n".join(problems))
    return ds, cases
