"""Reading and writing 3D images with their geometry.

Conventions used everywhere in kneeseg:
- arrays are numpy in (z, y, x) order, as ``SimpleITK.GetArrayFromImage`` returns them;
- a :class:`Geometry` keeps SimpleITK's (x, y, z) order for spacing, origin, size and the
  row-major 3x3 direction, because that is what gets written back to disk unchanged;
- anything SimpleITK reads is accepted (NIfTI, NRRD, MHA, ...) and a folder is read as a DICOM
  series sorted by slice position; label maps are written with the endings in :data:`OUTPUT_ENDINGS`:
  the image endings of :data:`SUPPORTED_ENDINGS` and ``.seg.nrrd``, a 3D Slicer segmentation
  (kneeseg.io.segmentation), which counts as one ending.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kneeseg.errors import KneesegError
from kneeseg.io.atomic import atomic_path, refuse_special_file
from kneeseg.io.headers import spacing_problem
from kneeseg.io.segmentation import SEGMENTATION_ENDING, write_seg_nrrd
from kneeseg.io.truncation import Shortfall, data_shortfall, dicom_shortfall, is_dicom_file

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
OUTPUT_ENDINGS = SUPPORTED_ENDINGS + (SEGMENTATION_ENDING,)
_READ_ENDINGS = OUTPUT_ENDINGS + (".mhd", ".nhdr", ".dcm")


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie in scanner space (SimpleITK order: x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # 9 values, row-major 3x3

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Map continuous (N, 3) voxel indices in x, y, z order to physical millimetres."""
        d = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin) + (np.asarray(index_xyz) * np.asarray(self.spacing)) @ d.T

    def matches(self, other: Geometry, tol: float = 1e-4) -> str | None:
        """None if both describe the same voxel grid, else a short description of the difference."""
        if tuple(self.size) != tuple(other.size):
            return f"size {tuple(map(int, other.size))} differs from {tuple(map(int, self.size))}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = np.maximum(1.0, np.abs(a)) if name == "origin" else 1.0
            if np.any(np.abs(a - b) > tol * scale):
                # plain floats: a numpy scalar's repr would print as np.float64(...) in the message
                return f"{name} {tuple(round(float(v), 5) for v in b)} differs from {tuple(round(float(v), 5) for v in a)}"
        return None

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            size=tuple(int(v) for v in d["size"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )


def file_ending(path: str | os.PathLike) -> str:
    """The image ending of ``path`` (``.nii.gz`` and ``.seg.nrrd`` count as one), or '' for a folder/unknown."""
    name = Path(path).name.lower()
    for ending in sorted(_READ_ENDINGS, key=len, reverse=True):
        if name.endswith(ending):
            return ending
    return ""


def strip_ending(path: str | os.PathLike) -> str:
    """File name without its image ending: ``knee_0000.nii.gz`` -> ``knee_0000``."""
    name = Path(path).name
    ending = file_ending(name)
    return name[: len(name) - len(ending)] if ending else name


@contextlib.contextmanager
def itk_quiet() -> Iterator[None]:
    """No ITK warnings on stderr: what they would say (a substituted spacing, a folder without DICOM) is
    judged by kneeseg and said in its own words, or refused."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def dicom_series_files(folder: Path) -> tuple[str, ...]:
    """The files of the one DICOM series in ``folder``, in slice order (GDCM: by position along the normal)."""
    with itk_quiet():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise KneesegError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise KneesegError(f"{folder}: folder holds {len(series)} DICOM series; give one series per folder")
    with itk_quiet():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = dicom_series_files(folder)
    _check_slice_files(folder, names)
    _check_slice_geometry(folder, names)
    reader.SetFileNames(names)
    if hasattr(reader, "SetSpacingWarningRelThreshold"):  # judged above, in kneeseg's words: no raw ITK warning
        reader.SetSpacingWarningRelThreshold(1.0)
    with itk_quiet():
        return reader.Execute()


def _short_slice(folder: Path, name: str, short: Shortfall) -> KneesegError:
    return KneesegError(f"{folder}: DICOM slice {Path(name).name} is cut short: its header describes {short.expected} bytes of "
                        f"pixel data, the file holds {short.found}, {100 * short.found // max(1, short.expected)}%")


def _check_slice_files(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse a series with a slice whose pixel data is cut short: GDCM reads a short pixel data element
    as zeros, and leaves a file cut short out of the series without a word (the first or last slice
    then goes missing unnoticed), so the folder's other DICOM files are measured too."""
    listed = {os.path.abspath(n) for n in names}
    for name in names:
        short = dicom_shortfall(name, force=True)  # GDCM took it for DICOM, preamble or not
        if short is not None:
            raise _short_slice(folder, name, short)
    for other in sorted(folder.iterdir()):
        if os.path.abspath(other) not in listed and other.is_file() and is_dicom_file(other):
            short = dicom_shortfall(other)
            if short is not None:
                raise _short_slice(folder, str(other), short)


# Where a slice lies and how big its pixels are; without them ITK guesses (what it would do, in the message).
_SLICE_GEOMETRY = (("0020|0032", "ImagePositionPatient (0020,0032)", 3, "ITK would stack the slices 1 mm apart"),
                   ("0020|0037", "ImageOrientationPatient (0020,0037)", 6, "ITK would take the slices as axial"),
                   ("0028|0030", "PixelSpacing (0028,0030)", 2, "ITK would read 1 mm pixels"))


def _usable(text: str, count: int, key: str) -> bool:
    """Whether a slice's header value (DICOM's backslash-separated numbers) is the geometry it should be."""
    try:
        values = [float(v) for v in text.split("\\")]
    except ValueError:
        return False
    if len(values) != count or not np.all(np.isfinite(values)):
        return False
    if key == "0028|0030":
        return min(values) > 0
    if key == "0020|0037":
        return bool(np.linalg.norm(np.cross(values[:3], values[3:])) > 1e-3)  # two directions, not parallel
    return True


# Slice gaps may differ from the series' typical gap by this share (or _SLICE_GAP_ABS_TOL mm, the rounding of
# positions written with two decimals); more is a missing slice or uneven spacing.
_SLICE_GAP_REL_TOL = 0.01
_SLICE_GAP_ABS_TOL = 0.01


def _check_slice_geometry(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse a series of single-frame slices whose geometry ITK would guess (a slice without a usable
    position, orientation or pixel spacing), or whose slices are not evenly spaced (a missing slice, uneven
    or repeated positions): ITK would lay them on an evenly spaced grid, putting the voxels near the gap up
    to half a gap off."""
    if len(names) < 2:
        return
    header = sitk.ImageFileReader()
    values: dict[str, list[str]] = {key: [] for key, *_ in _SLICE_GEOMETRY}
    for name in names:
        header.SetFileName(name)
        try:
            with itk_quiet():
                header.ReadImageInformation()
        except RuntimeError:
            return  # an unreadable header: ITK's reader says what is wrong with it
        if header.HasMetaDataKey("0028|0008") and header.GetMetaData("0028|0008").strip() not in ("", "1"):
            return  # multi-frame files: their geometry is per frame, in functional groups GDCM reads
        for key in values:
            values[key].append(header.GetMetaData(key) if header.HasMetaDataKey(key) else "")
    for key, what, count, guess in _SLICE_GEOMETRY:
        lacking = [Path(name).name for name, text in zip(names, values[key]) if not _usable(text, count, key)]
        if lacking:
            who = "its slices have" if len(lacking) == len(names) else \
                f"slice {lacking[0]}{f' (and {len(lacking) - 1} more)' if len(lacking) > 1 else ''} has"
            raise KneesegError(f"{folder}: DICOM series without its geometry: {who} no usable {what}, and without it "
                               f"{guess}; kneeseg does not guess it")
    if len(names) < 3:
        return
    positions = [[float(v) for v in text.split("\\")] for text in values["0020|0032"]]
    orientation = [float(v) for v in values["0020|0037"][0].split("\\")]
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.asarray(positions) @ normal
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    typical = float(np.median(gaps))
    tolerance = max(_SLICE_GAP_REL_TOL * typical, _SLICE_GAP_ABS_TOL)
    bad = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    if typical <= tolerance:
        raise KneesegError(f"{folder}: DICOM series has {len(names)} slices at only "
                           f"{len(np.unique(np.round(along / tolerance)))} positions; give one series per folder")
    if bad.size:
        i = int(bad[np.argmax(np.abs(gaps[bad] - typical))])  # the worst gap
        first, second = (Path(names[order[k]]).name for k in (i, i + 1))
        found = float(gaps[i])
        what = (f"slices {first} and {second} lie at the same position" if found <= tolerance else
                f"found {found:.4g} mm between slices {first} and {second}")
        problem = "a missing slice" if found > 1.5 * typical else "uneven slice spacing"
        raise KneesegError(f"{folder}: DICOM series has {problem}: expected slices {typical:.4g} mm apart, {what} "
                           f"({bad.size} of {len(gaps)} gaps differ)")


DICOM_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read a file or DICOM folder as a SimpleITK image; any failure is a one-line KneesegError.

    A file shorter than its header says is an error (ITK's NIfTI reader fills the rest with zeros
    silently; its NRRD and MetaImage readers fail), and so is a DICOM series with a slice cut short, a
    missing slice or uneven slice spacing (ITK reads it onto an evenly spaced grid with only a warning),
    a header whose voxel spacing is zero, negative or not a number (kneeseg.io.headers; ITK reads 1 mm),
    and a path that is neither a file nor a folder (/dev/null, a named pipe). ITK's warnings are not
    shown: what they say is judged here.
    """
    path = Path(path)
    if not path.exists():
        raise KneesegError(f"{path}: file not found")
    refuse_special_file(path)  # /dev/null, a named pipe (reading it would wait forever), ...
    if path.is_file():
        short = data_shortfall(path)  # ITK's NIfTI reader would fill the missing voxels with zeros
        if short is not None:
            raise KneesegError(f"{path}: {short.describe(path)}")
        problem = spacing_problem(path)  # ITK would read a zero or NaN spacing as 1 mm
        if problem is not None:
            raise KneesegError(f"{path}: {problem}")
    try:
        if path.is_dir():
            return _read_dicom_series(path)
        with itk_quiet():
            image = sitk.ReadImage(str(path))
    except KneesegError:
        raise
    except (RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()
        nrrd = [ln for ln in first if ln.startswith("[nrrd]")]  # teem's last line is its reason
        why = nrrd[-1] if nrrd else next((ln for ln in first if "ERROR" in ln or "Unable" in ln), first[-1] if first else "")
        raise KneesegError(f"{path}: cannot read image ({why.strip()[:160]})") from None
    # ITK reads a DICOM SEG's frames as an image stacked at 1 mm, away from the scan: refused.
    if image.HasMetaDataKey("0008|0016") and image.GetMetaData("0008|0016").strip() == DICOM_SEG_SOP_CLASS:
        raise KneesegError(f"{path}: a DICOM Segmentation object, which kneeseg reads neither as a scan nor as a label "
                           "map; give the scan's series, or the label map kneeseg_predict writes without --output-type dicom-seg")
    return image


def read_image(path: str | os.PathLike, dtype=None) -> tuple[np.ndarray, Geometry]:
    """Read a single-channel 3D image as a (z, y, x) array and its geometry.

    Raises KneesegError (naming ``path``) for unreadable files, non-3D images and vector images.
    """
    image = read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise KneesegError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a single-channel image (one file per channel, _0000, _0001, ...)"
        )
    if image.GetDimension() != 3:
        raise KneesegError(f"{path}: is {image.GetDimension()}D; expected a 3D image")
    array = sitk.GetArrayFromImage(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, Geometry.of(image)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True,
                labels: dict[str, int] | None = None) -> None:
    """Write a (z, y, x) array with ``geometry`` to ``path`` atomically (format from the ending).

    ``.seg.nrrd`` writes a 3D Slicer segmentation with one segment per label of ``labels`` (name ->
    value; default: ``label_N`` for each nonzero value present)."""
    path = Path(path)
    ending = file_ending(path)
    if ending not in OUTPUT_ENDINGS:
        raise KneesegError(f"{path}: unsupported output ending; use one of {', '.join(OUTPUT_ENDINGS)}")
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if ending == SEGMENTATION_ENDING:
        if labels is None:
            labels = {f"label_{int(v)}": int(v) for v in np.unique(array) if v != 0}
        write_seg_nrrd(array, geometry, path, labels)
        return
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise KneesegError(f"{path}: cannot write image ({str(exc).strip().splitlines()[-1][:160]})") from None
