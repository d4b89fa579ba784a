"""What -i and -o name: a file, a folder of CASE_0000.<ext> files, or a DICOM series folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io import OUTPUT_ENDINGS, SUPPORTED_ENDINGS, file_ending, strip_ending


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


def discover_cases(inp: Path, out: Path, num_channels: int) -> list[InputCase]:
    """Cases to predict and where each output goes (the input's format; NIfTI for DICOM input)."""
    inp, out = Path(inp), Path(out)
    if not inp.exists():
        raise KneesegError(f"{inp}: input not found")
    single_out = file_ending(out) in OUTPUT_ENDINGS
    if not single_out and out.suffix and not out.is_dir():  # e.g. bones.stl: an image that cannot be written
        raise KneesegError(f"{out}: cannot write a label map as '{out.suffix}' (use {', '.join(OUTPUT_ENDINGS)}, "
                           "or a folder; a folder whose name has a dot must exist already)")
    if inp.is_file():
        case_id = strip_ending(inp)
        case_id = case_id[:-5] if case_id.endswith("_0000") else case_id
        target = out if single_out else out / f"{case_id}{_output_ending(inp)}"
        return [InputCase(case_id, _channels_of(inp, num_channels), target)]
    if _is_dicom_folder(inp):
        target = out if single_out else out / f"{inp.name}.nii.gz"
        return [InputCase(inp.name, (inp,), target)]
    firsts = sorted(p for p in inp.iterdir() if p.is_file() and strip_ending(p).endswith("_0000") and file_ending(p))
    if not firsts:
        raise KneesegError(f"{inp}: no CASE_0000.<ext> images and no DICOM series in this folder")
    if single_out:
        raise KneesegError(f"{out}: input is a folder, so the output must be a folder, not an image file")
    if out.exists() and out.resolve() == inp.resolve():
        raise KneesegError(f"{out}: is the input folder; write the predictions to another folder")
    cases = []
    for first in firsts:
        case_id = strip_ending(first)[:-5]
        cases.append(InputCase(case_id, _channels_of(first, num_channels), out / f"{case_id}{_output_ending(first)}"))
    return cases
