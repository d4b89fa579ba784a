"""What -i and -o name: a file, a folder of scans, a DICOM series folder, or a folder tree of DICOM series.

A folder of scans follows nnU-Net (CASE_0000.<ext>, CASE_0001.<ext>, ... per channel); for a
one-channel model, every image file without a channel suffix is a case too, named by its file name
(TotalSegmentator users' folders). DICOM series below the input folder (a PACS export, a DICOMDIR
tree) are cases too, each named by its folder's path under the input, ``/`` becoming ``__``; the
input folder's own series, if it holds one, is named by the folder. Nothing in the folder is left
out without a word: an image file that belongs to no case is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io import OUTPUT_ENDINGS, SUPPORTED_ENDINGS, file_ending, strip_ending
from kneeseg.io.atomic import check_name_length, refuse_special_file
from kneeseg.io.dicomseg import DICOM_SEG_ENDING
from kneeseg.io.image import itk_quiet

# The longest name kneeseg_predict writes beside an output CASE.<ext> is CASE.statistics.json.
_LONGEST_BESIDE = ".statistics.json"
_CHANNEL = re.compile(r"_\d{4}$")  # CASE_0001: a channel file


@dataclass(frozen=True)
class InputCase:
    case_id: str
    channels: tuple[Path, ...]  # files, or one DICOM folder
    output: Path


def _is_dicom_folder(folder: Path) -> bool:
    import SimpleITK as sitk

    with itk_quiet():  # GDCM warns on every folder without DICOM
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


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
    ``dicom_seg``, or an ``out`` ending in .dcm, a DICOM SEG per DICOM series, CASE.dcm). Every output
    name is checked against the output folder's name length before anything is predicted."""
    inp, out = Path(inp), Path(out)
    if not inp.exists():
        raise KneesegError(f"{inp}: input not found")
    refuse_special_file(inp)  # ``out`` is checked before (kneeseg.inference.outputs.check_output_paths)
    cases = _cases(inp, out, num_channels, dicom_seg or file_ending(out) == DICOM_SEG_ENDING)
    for case in cases:
        check_name_length(case.output, beside(case.output))
    return cases


def beside(output: Path) -> int:
    """How much longer than ``output``'s name the longest file named after it is (CASE.statistics.json)."""
    return max(0, len(_LONGEST_BESIDE) - len(file_ending(output)))


def _cases(inp: Path, out: Path, num_channels: int, dicom_seg: bool) -> list[InputCase]:
    if dicom_seg and inp.is_file():
        raise KneesegError(f"{inp}: a DICOM SEG is written for a DICOM series input only (it references the series' "
                           f"slices); this is an image file (give an output ending in one of {', '.join(OUTPUT_ENDINGS)})")
    single_out = single_output(out)  # its name, folder and ending: checked before (kneeseg.inference.outputs)
    if inp.is_file():
        case_id = _case_id(inp)
        target = out if single_out else out / f"{case_id}{_output_ending(inp)}"
        return [InputCase(case_id, _channels_of(inp, num_channels), target)]
    series_ending = DICOM_SEG_ENDING if dicom_seg else ".nii.gz"
    images = sorted(p for p in inp.iterdir() if p.is_file() and file_ending(p) and file_ending(p) != ".dcm")
    series = ([inp] if _is_dicom_folder(inp) else []) + _dicom_series_below(inp)
    if series == [inp] and not images:  # one series: -o may name its output
        target = out if single_out else out / f"{inp.name}{series_ending}"
        return [InputCase(inp.name, (inp,), target)]
    firsts = _first_channels(images, num_channels)
    if dicom_seg and firsts:
        raise KneesegError(f"{inp}: a DICOM SEG is written for DICOM series only, and this folder holds image files")
    if not firsts and not series:
        raise KneesegError(f"{inp}: no CASE_0000.<ext> images, no DICOM series in this folder or below it")
    if single_out:
        raise KneesegError(f"{out}: input is a folder of {len(firsts) + len(series)} cases ({_what(firsts, series)}), "
                           "so the output must be a folder, not an image file")
    if out.exists() and out.resolve() == inp.resolve():
        raise KneesegError(f"{out}: is the input folder; write the predictions to another folder")
    cases = []
    for first in firsts:
        case_id = _case_id(first)
        cases.append(InputCase(case_id, _channels_of(first, num_channels), out / f"{case_id}{_output_ending(first)}"))
    for folder in series:
        case_id = "__".join(folder.relative_to(inp).parts) or inp.name  # the input's own series: named by its folder
        cases.append(InputCase(case_id, (folder,), out / f"{case_id}{series_ending}"))
    seen: dict[str, InputCase] = {}
    for case in cases:  # two inputs, one output: the second would replace the first
        if case.case_id in seen:
            raise KneesegError(f"{case.channels[0]}: gives the same case id '{case.case_id}' as {seen[case.case_id].channels[0]}; "
                               "rename one of them")
        seen[case.case_id] = case
    return cases


def _first_channels(images: list[Path], num_channels: int) -> list[Path]:
    """The first channel file of each case among a folder's image files; a file that belongs to no case is
    refused (it would be left out without a word)."""
    if num_channels == 1 and not any(strip_ending(p).endswith("_0000") for p in images):
        return images  # one file per case, any name
    firsts = [p for p in images if strip_ending(p).endswith("_0000")]
    channels = {f for first in firsts for f in _channels_of(first, num_channels)}
    for p in images:
        if p in channels:
            continue
        if num_channels == 1 and not _CHANNEL.search(strip_ending(p)):
            firsts.append(p)  # a file named without a channel suffix: a case of its own
            continue
        ending = file_ending(p)
        names = f"CASE_0000{ending}" + (f" to CASE_{num_channels - 1:04d}{ending}" if num_channels > 1 else "")
        raise KneesegError(f"{p}: belongs to no case: the model takes {num_channels} channel(s), {names} per case; "
                           "move or rename it")
    return sorted(firsts)


def _what(firsts: list[Path], series: list[Path]) -> str:
    parts = [f"{len(firsts)} image case(s)"] if firsts else []
    return ", ".join(parts + ([f"{len(series)} DICOM series"] if series else []))


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
