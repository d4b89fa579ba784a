"""What -i and -o name: a file, a folder of scans, a DICOM series folder, or a folder tree of DICOM series.

A folder of scans follows nnU-Net (CASE_0000.<ext>, CASE_0001.<ext>, ... per channel); for a
one-channel model, a folder without any ``_0000`` file takes every image file as one case, named
by its file name (TotalSegmentator users' folders). A folder holding neither images nor a series is
searched for DICOM series below it (a PACS export, a DICOMDIR tree): each series is a case named by
its folder's path under the input, ``/`` becoming ``__``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io import OUTPUT_ENDINGS, SUPPORTED_ENDINGS, file_ending, strip_ending
from kneeseg.io.dicomseg import DICOM_SEG_ENDING


@dataclass(frozen=True)
class InputCase:
    case_id: str
    channels: tuple[Path, ...]  # files, or one DICOM folder
    output: Path


def _is_dicom_folder(folder: Path) -> bool:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on every folder without DICOM
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _channels_of(first: Path, num_channels: int) -> tuple[Path, ...]:
    """CASE_0000.ext -> (CASE_0000.ext, CASE_0001.ext, ...); every one must exist."""
    ending = file_ending(first)
    stem = strip_ending(first)
    if num_channels == 1:
        return (first,)
    if not stem.endswith("_0000"):
        raise KneesegError(f"{first}: the model needs {num_channels} channels; name files CASE_0000{ending}, CASE_0001{ending}, ...")
    files = tuple(first.with_name(f"{stem[:-5]}_{c:04d}{ending}") for c in range(num_channels))
    for f in files:
        if not f.exists():
            raise KneesegError(f"{f}: channel {f.name[len(stem) - 4:len(stem)]} missing (the model needs {num_channels} channels)")
    return files


def _output_ending(source: Path) -> str:
    ending = file_ending(source)
    return ending if ending in SUPPORTED_ENDINGS else ".nii.gz"  # DICOM and others: NIfTI


def single_output(out: Path) -> bool:
    """Whether ``-o`` names one output file (an image ending, or .dcm for a DICOM SEG), not a folder."""
    return file_ending(out) in (*OUTPUT_ENDINGS, DICOM_SEG_ENDING)


def _case_id(first: Path) -> str:
    """CASE_0000.nii.gz -> CASE; a file without the channel suffix keeps its name: knee.nrrd -> knee."""
    stem = strip_ending(first)
    return stem[:-5] if stem.endswith("_0000") else stem


def discover_cases(inp: Path, out: Path, num_channels: int, dicom_seg: bool = False) -> list[InputCase]:
    """Cases to predict and where each output goes (the input's format; NIfTI for DICOM input; with
    ``dicom_seg``, or an ``out`` ending in .dcm, a DICOM SEG per DICOM series, CASE.dcm)."""
    inp, out = Path(inp), Path(out)
    if not inp.exists():
        raise KneesegError(f"{inp}: input not found")
    dicom_seg = dicom_seg or file_ending(out) == DICOM_SEG_ENDING
    if dicom_seg and inp.is_file():
        raise KneesegError(f"{inp}: a DICOM SEG is written for a DICOM series input only (it references the series' "
                           f"slices); this is an image file (give an output ending in one of {', '.join(OUTPUT_ENDINGS)})")
    single_out = single_output(out)
    if not single_out and out.suffix and not out.is_dir():  # e.g. bones.stl: an image that cannot be written
        raise KneesegError(f"{out}: cannot write a label map as '{out.suffix}' (use {', '.join(OUTPUT_ENDINGS)}, "
                           "or a folder; a folder whose name has a dot must exist already)")
    if inp.is_file():
        case_id = _case_id(inp)
        target = out if single_out else out / f"{case_id}{_output_ending(inp)}"
        return [InputCase(case_id, _channels_of(inp, num_channels), target)]
    series_ending = DICOM_SEG_ENDING if dicom_seg else ".nii.gz"
    if _is_dicom_folder(inp):
        target = out if single_out else out / f"{inp.name}{series_ending}"
        return [InputCase(inp.name, (inp,), target)]
    images = sorted(p for p in inp.iterdir() if p.is_file() and file_ending(p) and file_ending(p) != ".dcm")
    firsts = [p for p in images if strip_ending(p).endswith("_0000")]
    if not firsts and num_channels == 1:
        firsts = images  # one file per case, any name
    series = [] if images else _dicom_series_below(inp)
    if dicom_seg and firsts:
        raise KneesegError(f"{inp}: a DICOM SEG is written for DICOM series only, and this folder holds image files")
    if not firsts and not series:
        raise KneesegError(f"{inp}: no CASE_0000.<ext> images, no DICOM series in this folder or below it")
    if single_out:
        raise KneesegError(f"{out}: input is a folder, so the output must be a folder, not an image file")
    if out.exists() and out.resolve() == inp.resolve():
        raise KneesegError(f"{out}: is the input folder; write the predictions to another folder")
    cases = []
    for first in firsts:
        case_id = _case_id(first)
        cases.append(InputCase(case_id, _channels_of(first, num_channels), out / f"{case_id}{_output_ending(first)}"))
    for folder in series:
        case_id = "__".join(folder.relative_to(inp).parts)
        cases.append(InputCase(case_id, (folder,), out / f"{case_id}{series_ending}"))
    seen: dict[str, InputCase] = {}
    for case in cases:  # two inputs, one output: the second would replace the first
        if case.case_id in seen:
            raise KneesegError(f"{case.channels[0]}: gives the same case id '{case.case_id}' as {seen[case.case_id].channels[0]}; "
                               "rename one of them")
        seen[case.case_id] = case
    return cases


def study_part(cases: list[InputCase], num_parts: int = 1, part_id: int = 0) -> list[InputCase]:
    """Part ``part_id`` of ``num_parts`` of a study, so that several processes or machines share it:
    every ``num_parts``-th case by case id, starting at ``part_id`` (nnU-Net's -num_parts/-part_id)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise KneesegError(f"part {part_id} of {num_parts}: the part id must lie in 0..number of parts - 1")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


def _dicom_series_below(root: Path) -> list[Path]:
    """Folders under ``root`` that hold a DICOM series, sorted."""
    found = [Path(folder) for folder, _, files in os.walk(root) if files and Path(folder) != root and _is_dicom_folder(Path(folder))]
    return sorted(found)
