"""DICOM Segmentation objects (SEG) for predictions made on a DICOM series, with highdicom.

A SEG is what a PACS stores and what DICOM viewers (3D Slicer with QuantitativeReporting, OHIF,
ITK-SNAP's DICOM reader) show as segments tied to the source images: one binary segment per bone,
named and coded with SNOMED CT (femur 71341001, tibia 12611008, patella 64234005; others: bone
272673000) and coloured as in the label descriptions (RecommendedDisplayCIELabValue), a frame per
source slice the bone lies on, each referencing that slice's SOP instance, and the source study,
patient and frame of reference carried over. The label map must be on the
series' own grid (kneeseg_predict's output is), its slices in the order SimpleITK read the series.

What the SEG takes from the source slices is checked before anything is predicted or written
(:func:`dicom_seg_sources`): an attribute it cannot do without is refused in one line naming the
series and the attribute; one it can derive is derived, on the copies read into memory (the files
are not touched); patient and study attributes that DICOM lets be empty are left empty when absent.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from kneeseg import __version__
from kneeseg.errors import KneesegError
from kneeseg.io.atomic import atomic_path
from kneeseg.io.image import dicom_series_files
from kneeseg.io.labelfiles import label_colours

DICOM_SEG_ENDING = ".dcm"
# SNOMED CT (code, meaning) of each knee bone; a label of another name is coded as a bone.
BONE_CODES = {"femur": ("71341001", "Femur"), "tibia": ("12611008", "Tibia"), "patella": ("64234005", "Patella")}
OTHER_BONE = ("272673000", "Bone")

# What the SEG cannot be made without: what it needs each for ("which the SEG needs to ..."). Each must be
# in every slice (highdicom takes the study, series and frame of reference from the first slice and checks
# that every slice agrees). Rows to PixelSpacing are the series' geometry: without them no label map either.
NEEDED = {
    "StudyInstanceUID": "join the series' study",
    "SeriesInstanceUID": "reference the series",
    "FrameOfReferenceUID": "lie in the series' frame of reference",
    "SOPInstanceUID": "reference each slice",
    "SOPClassUID": "reference each slice",
    "Rows": "size its frames",
    "Columns": "size its frames",
    "ImagePositionPatient": "place each frame",
    "ImageOrientationPatient": "orient its frames",
    "PixelSpacing": "size its pixels",
}
_GEOMETRY = ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
# The slice's file meta information repeats its SOP instance and class (the values a PACS stored it under).
_FROM_FILE_META = {"SOPInstanceUID": "MediaStorageSOPInstanceUID", "SOPClassUID": "MediaStorageSOPClassUID"}
# Patient and study attributes the SEG copies from the first slice. DICOM lets them be empty (type 2:
# unknown), so one that is absent, or holds a value the SEG cannot carry (a sex of 'U', a date written
# 2020-01-01), is left empty rather than refusing the SEG.
LEFT_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
              "StudyID", "ReferringPhysicianName")
# Derived: SliceThickness (the gap between the slice positions, as ITK laid out the label map) and the
# SEG's content label (from Modality: MR_SEG; SEG without one).


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""


def _numbers(value, count: int) -> list[float] | None:
    """``value`` (one number or several) as ``count`` finite numbers, or None."""
    from pydicom.multival import MultiValue

    try:
        numbers = [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def _missing(ds, keyword: str) -> bool:
    """Whether ``ds`` lacks ``keyword`` or holds no usable value for it."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None or (len(value) == 0 if isinstance(value, (list, tuple, MultiValue)) else not str(value).strip()):
        return True
    if keyword == "ImagePositionPatient":
        return _numbers(value, 3) is None
    if keyword == "ImageOrientationPatient":
        numbers = _numbers(value, 6)
        return numbers is None or bool(np.linalg.norm(np.cross(numbers[:3], numbers[3:])) < 1e-3)  # not two directions
    if keyword == "PixelSpacing":
        numbers = _numbers(value, 2)
        return numbers is None or min(numbers) <= 0
    return False


def _refuse(folder: Path, keyword: str, lacking: list[str], total: int, why: str) -> KneesegError:
    who = "its slices have" if len(lacking) == total else \
        f"slice {lacking[0]}{f' (and {len(lacking) - 1} more)' if len(lacking) > 1 else ''} has"
    note = "" if keyword in _GEOMETRY else " (a label map, -o CASE.nii.gz, can still be made)"
    return KneesegError(f"{folder}: cannot make a DICOM SEG of this series: {who} no usable {keyword} {_tag(keyword)}, "
                        f"which the SEG needs to {why}{note}")


def dicom_seg_sources(folder: Path) -> list:
    """The slices of the series in ``folder`` as pydicom datasets (no pixel data), in the label map's
    slice order, with every attribute the SEG takes from them present: checked, derived, or left empty
    (see NEEDED, LEFT_EMPTY). A KneesegError naming the series and the attribute when one is missing."""
    import pydicom
    from highdicom.enum import SpecificCharacterSetValues
    from pydicom.errors import InvalidDicomError

    files = dicom_series_files(folder)
    with warnings.catch_warnings():  # values DICOM does not allow are judged below, not printed as they are read
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
        try:
            sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        except (OSError, InvalidDicomError) as exc:
            raise KneesegError(f"{folder}: cannot read the series' slices as DICOM ({exc})") from None
        if any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in sources):
            raise KneesegError(f"{folder}: cannot make a DICOM SEG of this series: it is a multi-frame image, and kneeseg "
                               "writes DICOM SEGs of series of single-frame slices (a label map, -o CASE.nii.gz, can still be made)")
        for keyword in NEEDED:
            for ds in sources:
                if _missing(ds, keyword) and keyword in _FROM_FILE_META:
                    value = getattr(ds, "file_meta", {}).get(_FROM_FILE_META[keyword])
                    if value:
                        setattr(ds, keyword, value)
            lacking = [Path(f).name for f, ds in zip(files, sources) if _missing(ds, keyword)]
            if lacking:
                raise _refuse(folder, keyword, lacking, len(files), NEEDED[keyword])
        uids = [str(ds.SOPInstanceUID) for ds in sources]
        if len(set(uids)) < len(uids):
            first = next(i for i, uid in enumerate(uids) if uids.count(uid) > 1)
            second = uids.index(uids[first], first + 1)
            raise KneesegError(f"{folder}: cannot make a DICOM SEG of this series: slices {Path(files[first]).name} and "
                               f"{Path(files[second]).name} have the same SOPInstanceUID (0008,0018), by which each frame "
                               "references its slice")
        charset = sources[0].get("SpecificCharacterSet")
        try:
            for value in [] if not charset else [charset] if isinstance(charset, str) else charset:
                SpecificCharacterSetValues(value)
        except ValueError:
            raise KneesegError(f"{folder}: cannot make a DICOM SEG of this series: its SpecificCharacterSet (0008,0005) "
                               f"{charset!s} is not a DICOM character set, so its names cannot be carried over") from None
        thickness = _slice_gap(sources)
        for ds in sources:
            for keyword in LEFT_EMPTY:
                if _missing(ds, keyword) or not _allowed(ds, keyword):
                    setattr(ds, keyword, None)
            if _numbers(ds.get("SliceThickness"), 1) is None or float(ds.SliceThickness) <= 0:
                if thickness is None:
                    raise _refuse(folder, "SliceThickness", [Path(f).name for f in files], len(files),
                              "size its frames (and a one-slice series has no slice gap to take it from)")
                ds.SliceThickness = f"{thickness:.6g}"
            if "SpacingBetweenSlices" in ds:  # what a writer put there may not be the gap (ITK writes 1): highdicom
                del ds.SpacingBetweenSlices   # takes the gap from the slice positions instead
    return sources


def _allowed(ds, keyword: str) -> bool:
    """Whether the SEG can carry ``ds``'s value of ``keyword`` as it is (highdicom refuses what DICOM does not allow)."""
    from pydicom.valuerep import DA, TM

    value = ds.get(keyword)
    if keyword == "PatientSex":
        return value in ("M", "F", "O")
    try:
        if keyword in ("StudyDate", "PatientBirthDate"):
            DA(str(value))
        elif keyword == "StudyTime":
            TM(str(value))
    except ValueError:
        return False
    return True


def _slice_gap(sources: list) -> float | None:
    """The typical distance between neighbouring slices along the slices' normal (mm), or None for one slice."""
    if len(sources) < 2:
        return None
    orientation = [float(v) for v in sources[0].ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in sources])
    gap = float(np.median(np.diff(along)))
    return gap if gap > 0 else None


def write_dicom_seg(path: Path, labels: np.ndarray, source_folder: Path, bones: dict[str, int], sources: list | None = None) -> None:
    """``labels`` (z, y, x) on the grid of the series in ``source_folder`` as a DICOM SEG at ``path``
    (one segment per entry of ``bones``, name -> label value, that occurs in ``labels``). ``sources``:
    the series' :func:`dicom_seg_sources`, when already read (checked before the prediction)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    sources = dicom_seg_sources(source_folder) if sources is None else sources  # in the label map's slice order
    if len(sources) != labels.shape[0] or any((s.Rows, s.Columns) != labels.shape[1:] for s in sources):
        raise KneesegError(f"{source_folder}: the series' {len(sources)} slices do not match the label map's "
                           f"{labels.shape[0]} slices of {labels.shape[1]}x{labels.shape[2]}")
    masks = {name: labels == value for name, value in bones.items() if value != 0}
    present = [name for name, mask in masks.items() if mask.any()]
    if not present:
        raise KneesegError(f"{source_folder}: no bone found in this series, so there is no segment to write as a DICOM "
                           f"SEG ({path} not written)")
    algorithm = hd.AlgorithmIdentificationSequence(name="kneeseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    colours = label_colours(bones)  # the label map's and the .seg.nrrd's colours, as CIELab (DICOM's)
    for number, name in enumerate(present, start=1):
        code, meaning = BONE_CODES.get(name, OTHER_BONE)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=Code(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*colours[name]),
        ))
    pixels = np.stack([masks[name] for name in present], axis=-1).astype(np.uint8)
    modality = str(sources[0].get("Modality") or "")
    with warnings.catch_warnings():  # the source's values are copied as they are, even a one-part anonymised name
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
        try:
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="kneeseg",
                manufacturer_model_name="kneeseg bone segmentation", software_versions=__version__,
                device_serial_number="none", series_description="kneeseg bones",
                content_label=f"{modality}_SEG" if re.fullmatch(r"[A-Z0-9_ ]{1,12}", modality) else "SEG",
            )
        except (ValueError, TypeError) as exc:  # highdicom's judgement of the source series, in one line
            raise KneesegError(f"{source_folder}: cannot make a DICOM SEG of this series: {exc}") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
