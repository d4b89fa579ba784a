"""DICOM Segmentation objects (SEG) for predictions made on a DICOM series, with highdicom.

A SEG is what a PACS stores and what DICOM viewers (3D Slicer with QuantitativeReporting, OHIF,
ITK-SNAP's DICOM reader) show as segments tied to the source images: one binary segment per bone,
named and coded with SNOMED CT (femur 71341001, tibia 12611008, patella 64234005; others: bone
272673000) and coloured as in the label descriptions (RecommendedDisplayCIELabValue), a frame per
source slice the bone lies on, each referencing that slice's SOP instance, and the source study,
patient and frame of reference carried over. The label map must be on the
series' own grid (kneeseg_predict's output is), its slices in the order SimpleITK read the series.
"""

from __future__ import annotations

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


def write_dicom_seg(path: Path, labels: np.ndarray, source_folder: Path, bones: dict[str, int]) -> None:
    """``labels`` (z, y, x) on the grid of the series in ``source_folder`` as a DICOM SEG at ``path``
    (one segment per entry of ``bones``, name -> label value, that occurs in ``labels``)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    sources = [pydicom.dcmread(f) for f in dicom_series_files(source_folder)]  # in the label map's slice order
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
    with warnings.catch_warnings():  # the source's patient name is copied as it is, even a one-part anonymised one
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        try:
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="kneeseg",
                manufacturer_model_name="kneeseg bone segmentation", software_versions=__version__,
                device_serial_number="none", series_description="kneeseg bones",
            )
        except ValueError as exc:  # highdicom's judgement of the source series, in one line
            raise KneesegError(f"{source_folder}: cannot make a DICOM SEG of this series: {exc}") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
