"""Importing the KneeBones3Dify-Annotated dataset (Zenodo 10534328) as an nnU-Net raw dataset.

Two inputs are accepted:
- the Zenodo download layout: ``Data/`` (one DICOM series) and ``GT-Masks/Mask_NNN.png``, where
  ``Mask_NNN.png`` belongs to the DICOM slice whose *InstanceNumber* is NNN. Neither the file names
  (``<series>_<InstanceNumber-1>.dcm``) nor the series reader's position order (which runs opposite
  to the instance numbers in this scan) can be used to pair them;
- a scan and a binary mask in any format SimpleITK reads (e.g. ``knee_0000.nii.gz`` + ``knee_bone.nii.gz``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kneeseg.dataset.bones import split_bones
from kneeseg.dataset.layout import KNEE_LABELS, DatasetJson, dataset_folder_name, foreground_labels
from kneeseg.errors import KneesegError
from kneeseg.io import Geometry, read_image, refuse_special_file, write_image

_MASK_RE = re.compile(r"^Mask_(\d+)\.png$", re.IGNORECASE)
INSTANCE_NUMBER_TAG = "0020|0013"
HALF_COLUMN = 256  # the benchmark protocol: half A = image columns (x) < 256, half B = the rest


@dataclass
class ImportResult:
    dataset_dir: Path
    report: list[str]
    label_counts: dict[str, int]


def read_zenodo_layout(folder: Path) -> tuple[np.ndarray, Geometry, np.ndarray, list[str]]:
    """Read ``Data/`` + ``GT-Masks/`` into (image, geometry, binary mask, notes), pairing by InstanceNumber."""
    data_dir, mask_dir = folder / "Data", folder / "GT-Masks"
    for d in (data_dir, mask_dir):
        if not d.is_dir():
            raise KneesegError(f"{d}: folder not found (expected the Zenodo layout Data/ + GT-Masks/)")
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(data_dir))
    if len(series) != 1:
        raise KneesegError(f"{data_dir}: expected one DICOM series, found {len(series)}")
    files = reader.GetGDCMSeriesFileNames(str(data_dir), series[0])  # sorted by slice position
    image, geometry = read_image(data_dir)
    header = sitk.ImageFileReader()
    instance_of_slice = []
    for name in files:
        header.SetFileName(name)
        header.ReadImageInformation()
        if not header.HasMetaDataKey(INSTANCE_NUMBER_TAG):
            raise KneesegError(f"{name}: DICOM file has no InstanceNumber (0020,0013)")
        instance_of_slice.append(int(header.GetMetaData(INSTANCE_NUMBER_TAG).strip()))
    masks = {int(m.group(1)): p for p in mask_dir.iterdir() if (m := _MASK_RE.match(p.name))}
    unmatched = sorted(set(masks) - set(instance_of_slice))
    if unmatched:
        raise KneesegError(f"{masks[unmatched[0]]}: no DICOM slice has InstanceNumber {unmatched[0]}")
    mask = np.zeros(image.shape, np.uint8)
    missing = 0
    for k, instance in enumerate(instance_of_slice):  # k is the slice index (z) of the volume
        if instance not in masks:
            missing += 1
            continue
        png = sitk.GetArrayFromImage(sitk.ReadImage(str(masks[instance])))
        if png.ndim == 3:  # RGB(A) masks: any channel set counts as bone
            png = png.max(-1)
        if png.shape != image.shape[1:]:
            raise KneesegError(f"{masks[instance]}: mask is {png.shape[::-1]} pixels, slice is {image.shape[:0:-1]}")
        mask[k] = png > 0
    notes = [f"{len(masks)} masks paired with {len(files)} slices by InstanceNumber"]
    if missing:
        notes.append(f"{missing} slice(s) have no Mask_NNN.png and are taken as background")
    return image, geometry, mask, notes


def cut_half(image: np.ndarray, labels: np.ndarray, geometry: Geometry, half: str):
    """Half 'A' (x < HALF_COLUMN) or 'B' (x >= HALF_COLUMN) of a (z, y, x) scan and its labels."""
    if half not in ("A", "B"):
        raise KneesegError(f"--half {half}: must be A or B")
    if image.shape[2] <= HALF_COLUMN:
        raise KneesegError(f"scan is only {image.shape[2]} columns wide; cannot cut at column {HALF_COLUMN}")
    cols = slice(0, HALF_COLUMN) if half == "A" else slice(HALF_COLUMN, None)
    first = 0 if half == "A" else HALF_COLUMN
    origin = geometry.index_to_physical(np.array([[first, 0, 0]]))[0]
    image, labels = image[:, :, cols], labels[:, :, cols]
    cut = Geometry((image.shape[2], *geometry.size[1:]), geometry.spacing, tuple(float(v) for v in origin), geometry.direction)
    return image, labels, cut


def import_kneebones3dify(
    source: Path,
    raw_root: Path,
    mask: Path | None = None,
    dataset_id: int = 901,
    name: str = "KneeBones3Dify",
    case_id: str = "knee",
    binary: bool = False,
    half: str | None = None,
) -> ImportResult:
    """Import the scan at ``source`` (Zenodo folder, or image file with ``mask``) into
    ``raw_root/DatasetNNN_Name``. The output folder appears complete or not at all.

    ``half`` ('A' or 'B') keeps one side of the honest one-scan protocol: the scan cut at image column
    HALF_COLUMN, labelled before the cut (so half B, which holds no patella, keeps femur and tibia
    named by the whole knee's anatomy), with the origin moved so that every voxel stays in place."""
    source = Path(source)
    refuse_special_file(source)
    if source.is_dir() and mask is None:
        image, geometry, binary_mask, report = read_zenodo_layout(source)
    elif mask is not None:
        image, geometry = read_image(source)
        binary_mask, mask_geometry = read_image(mask)
        problem = geometry.matches(mask_geometry)
        if problem:
            raise KneesegError(f"{mask}: mask geometry does not match the scan ({problem})")
        values = np.unique(binary_mask)
        if not set(values.tolist()) <= {0, 1, 255}:
            raise KneesegError(f"{mask}: expected a binary mask, found values {values[:8].tolist()}")
        report = [f"scan {source.name} with mask {mask.name}"]
    else:
        raise KneesegError(f"{source}: give a Zenodo folder (Data/ + GT-Masks/) or an image file with --mask")

    if binary:
        labels = (binary_mask > 0).astype(np.uint8)
        label_map = {"background": 0, "bone": 1}
        counts = {"bone": int(labels.sum())}
    else:
        split = split_bones(binary_mask, geometry, source=str(mask or source))
        labels, label_map = split.labels, dict(KNEE_LABELS)
        counts = {c.label: c.voxels for c in split.bones}
        report += split.report()

    if half is not None:
        image, labels, geometry = cut_half(image, labels, geometry, half)
        counts = {k: int((labels == v).sum()) for k, v in foreground_labels(label_map).items()}
        report.append(f"half {half}: columns {'0-255' if half == 'A' else '256-'} kept, {counts}")

    folder = raw_root / dataset_folder_name(dataset_id, name)
    if folder.exists():
        raise KneesegError(f"{folder}: already exists; remove it or choose another -d/--name")
    raw_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=raw_root))
    try:
        write_image(image, geometry, staging / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_image(labels, geometry, staging / "labelsTr" / f"{case_id}.nii.gz")
        DatasetJson(
            channel_names={"0": "T2"},
            labels=label_map,
            numTraining=1,
            name=name,
            description="KneeBones3Dify-Annotated v1.0.0: Esaote O-scan 0.3 T, 3D SST2, bone mask by a specialist",
            reference="Soscia et al. 2024, Zenodo 10534328",
            licence="CC BY 4.0",
        ).save(staging / "dataset.json")
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(dataset_dir=folder, report=report, label_counts=counts)
