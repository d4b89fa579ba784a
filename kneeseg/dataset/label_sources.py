"""Corrected labels as people save them, laid onto a scan's voxel grid with a dataset's label values.

Three kinds of file (:func:`read_label_source`):

- a **3D Slicer segmentation** (``.seg.nrrd``, or an ``.nrrd`` with ``SegmentN_*`` keys): read with
  pynrrd. Each segment N is its voxels of value ``SegmentN_LabelValue`` in layer ``SegmentN_Layer``
  (a 4D array when segments overlap, Slicer's layers; files of Slicer before 4.11 name no layers and
  hold one segment per layer) and is matched to the dataset's label of the same name, whatever the
  case ("Femur" is femur). A voxel claimed by two segments of different labels goes to the later
  segment, with a note, while the overlap is a boundary drawn twice (at most 5 % of the smaller
  segment); a larger overlap is refused, naming both and the number of voxels. Space
  ``left-posterior-superior`` and ``right-anterior-superior`` are read.
- a **DICOM SEG**: read with pydicom. Segments are matched by their SegmentLabel, the same way; each
  frame is placed at its ImagePositionPatient (or, without positions, at the slice its
  ReferencedSOPInstanceUID names, where the scan is a DICOM series); frames of a fractional SEG
  count where at least half the maximum. Given a DICOM series as the scan, the SEG must reference
  that series or share its frame of reference.
- a **label map** in any format kneeseg reads, whose values must be among the dataset's.

Every label must lie on the scan's grid: the same spacing and direction, and either the same
origin and size or a box of it whose corner sits on one of its voxels (Slicer may save a
segmentation cropped to its extent); it is then placed in the scan's full grid. Anything else is
refused naming both files: kneeseg never resamples a correction.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from kneeseg.errors import KneesegError
from kneeseg.io import Geometry, file_ending, read_image
from kneeseg.io.image import DICOM_SEG_SOP_CLASS
from kneeseg.io.nifti import has_nonfinite

OVERLAP_LIMIT = 0.05  # of the smaller segment: more overlap between two bones than this is refused
GRID_TOLERANCE = 1e-3  # of a voxel: how far a label's corner may lie from a voxel centre of the scan
_SPACES = {  # NRRD space -> sign of x and y in LPS (3D Slicer works in RAS, its files usually in LPS)
    "left-posterior-superior": (1.0, 1.0), "lps": (1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0), "ras": (-1.0, -1.0),
}
_SEGMENT_KEY = re.compile(r"^Segment(\d+)_Name$")


def read_label_source(label: Path, image: Path, grid: Geometry, labels: dict[str, int]) -> np.ndarray:
    """The corrected label ``label`` as a (z, y, x) uint8 label map on ``grid`` (the grid of the scan
    ``image``) with the values of ``labels`` (name -> value, background 0)."""
    label = Path(label)
    if not label.exists():
        raise KneesegError(f"{label}: file not found")
    ending = file_ending(label)
    if label.is_file() and ending in (".seg.nrrd", ".nrrd") and _has_segments(label):
        return _read_seg_nrrd(label, image, grid, labels)
    if label.is_file() and _is_dicom_seg(label):
        return _read_dicom_seg(label, image, grid, labels)
    array, geometry = read_image(label)
    if has_nonfinite(array, label):
        raise KneesegError(f"{label}: contains NaN or Inf values")
    values = np.unique(array)
    allowed = set(labels.values())
    unknown = [v.item() for v in values if v not in allowed or float(v) != int(v)]
    if unknown:
        shown = ", ".join(f"{v:g}" for v in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        raise KneesegError(f"{label}: holds value(s) {shown}, not among the dataset's labels {labels}")
    return place_on_grid(array.astype(np.uint8), geometry, grid, label, image)


def place_on_grid(array: np.ndarray, geometry: Geometry, grid: Geometry, label: Path, image: Path) -> np.ndarray:
    """``array`` (z, y, x, on ``geometry``) in the full ``grid``: as it is where the grids are the same,
    in its box where ``geometry`` is a box of ``grid``; otherwise a KneesegError naming both files."""
    problem = grid.matches(geometry)
    if problem is None:
        return array
    start = _box_start(geometry, grid)
    if start is None:
        raise KneesegError(f"{label}: does not lie on the grid of {image} ({problem})")
    out = np.zeros(grid.shape_zyx, np.uint8)
    z, y, x = start
    out[z:z + array.shape[0], y:y + array.shape[1], x:x + array.shape[2]] = array
    return out


def _box_start(geometry: Geometry, grid: Geometry) -> tuple[int, int, int] | None:
    """The (z, y, x) voxel of ``grid`` at ``geometry``'s first voxel, where ``geometry`` is a box of
    ``grid`` (same spacing and direction, corner on a voxel, inside it); else None."""
    if (np.abs(np.subtract(geometry.spacing, grid.spacing)) > 1e-4).any():
        return None
    if (np.abs(np.subtract(geometry.direction, grid.direction)) > 1e-4).any():
        return None
    index = _continuous_index(geometry.origin, grid)
    rounded = np.round(index)
    if (np.abs(index - rounded) > GRID_TOLERANCE).any():
        return None
    start = rounded.astype(int)
    if (start < 0).any() or (start + np.asarray(geometry.size) > np.asarray(grid.size)).any():
        return None
    return int(start[2]), int(start[1]), int(start[0])


def _continuous_index(point, grid: Geometry) -> np.ndarray:
    """The (x, y, z) voxel index of the physical ``point`` (LPS mm) in ``grid``."""
    d = np.asarray(grid.direction, float).reshape(3, 3)
    return np.linalg.solve(d * np.asarray(grid.spacing, float), np.asarray(point, float) - np.asarray(grid.origin, float))


def _match_names(label: Path, names: dict[int, str], labels: dict[str, int], what: str) -> dict[int, int]:
    """Segment key -> dataset label value, by name in any case; unknown names refused, listing the known."""
    known = {name.lower(): value for name, value in labels.items() if value != 0}
    unknown = [n for n in names.values() if n.strip().lower() not in known]
    if unknown:
        listed = ", ".join(name for name, value in labels.items() if value != 0)
        raise KneesegError(f"{label}: {what} {', '.join(repr(n) for n in unknown)} not among the dataset's labels "
                           f"(known: {listed}); rename {'it' if len(unknown) == 1 else 'them'} to one of those")
    return {key: known[name.strip().lower()] for key, name in names.items()}


def _combine(label: Path, masks: list[tuple[str, int, np.ndarray]], shape) -> np.ndarray:
    """One label map from (segment name, label value, mask) triples, in order. Where two segments of
    different labels claim a voxel (3D Slicer keeps overlapping segments in separate layers), the later
    one wins, with a note on stderr, as long as the overlap is at most ``OVERLAP_LIMIT`` of the smaller
    segment (a boundary drawn twice); a larger one is a mistake to fix in the editor, refused."""
    out = np.zeros(shape, np.uint8)
    for i, (name, value, mask) in enumerate(masks):
        for other, other_value, other_mask in masks[:i]:
            both = int(np.count_nonzero(mask & other_mask)) if other_value != value else 0
            if not both:
                continue
            smaller = min(int(np.count_nonzero(mask)), int(np.count_nonzero(other_mask)))
            if both > OVERLAP_LIMIT * smaller:
                raise KneesegError(f"{label}: segments '{other}' and '{name}' overlap in {both} voxel(s), "
                                   f"{100 * both / smaller:.0f} % of the smaller; a voxel can belong to one bone only: remove "
                                   "the overlap (3D Slicer's Segment Editor: Logical operators, Subtract) and save again")
            print(f"kneeseg: {label}: segments '{other}' and '{name}' overlap in {both} voxel(s); given to '{name}', "
                  "the later segment", file=sys.stderr)
        out[mask] = value
    return out


# ---- 3D Slicer segmentations ---------------------------------------------------------------------

def _has_segments(path: Path) -> bool:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except (OSError, nrrd.NRRDError):
        return path.name.lower().endswith(".seg.nrrd")  # the reader below says what is wrong with it
    return any(_SEGMENT_KEY.match(key) for key in header)


def _read_seg_nrrd(label: Path, image: Path, grid: Geometry, labels: dict[str, int]) -> np.ndarray:
    import nrrd

    try:
        data, header = nrrd.read(str(label))
    except (OSError, nrrd.NRRDError, ValueError) as exc:
        raise KneesegError(f"{label}: cannot read segmentation ({str(exc).strip()[:160]})") from None
    geometry = _nrrd_geometry(label, header, data.shape)
    if data.ndim == 3:
        layers = data.transpose(2, 1, 0)[None]  # pynrrd's x, y, z -> z, y, x
    elif data.ndim == 4:
        layers = data.transpose(0, 3, 2, 1)  # (layer, x, y, z) -> (layer, z, y, x)
    else:
        raise KneesegError(f"{label}: a {data.ndim}D array; a segmentation is 3D (one layer) or 4D (several layers)")
    segments = sorted(int(m.group(1)) for key in header if (m := _SEGMENT_KEY.match(key)))
    names = {n: str(header[f"Segment{n}_Name"]) for n in segments}
    values = _match_names(label, names, labels, "segment(s)")
    masks: list[tuple[str, int, np.ndarray]] = []
    claimed: list[set[int]] = [set() for _ in range(layers.shape[0])]
    # Files of 3D Slicer before 4.11 name no layers and hold one segment per layer, in order
    layer_each = layers.shape[0] == len(segments) and not any(f"Segment{n}_Layer" in header for n in segments)
    for i, n in enumerate(segments):
        try:
            value = int(header.get(f"Segment{n}_LabelValue", 1))
            layer = int(header.get(f"Segment{n}_Layer", i if layer_each else 0))
        except ValueError:
            raise KneesegError(f"{label}: segment '{names[n]}' has a label value or layer that is not a number") from None
        if not 0 <= layer < layers.shape[0]:
            raise KneesegError(f"{label}: segment '{names[n]}' lies in layer {layer}, but the file holds {layers.shape[0]}")
        claimed[layer].add(value)
        masks.append((names[n], values[n], layers[layer] == value))
    for layer, held in zip(layers, claimed):
        stray = sorted(v.item() for v in np.unique(layer) if v != 0 and v not in held)
        if stray:
            raise KneesegError(f"{label}: holds voxel value(s) {stray} that no segment names")
    return place_on_grid(_combine(label, masks, layers.shape[1:]), geometry, grid, label, image)


def _nrrd_geometry(label: Path, header: dict, shape: tuple[int, ...]) -> Geometry:
    """The LPS geometry of a segmentation's spatial axes (the last three of pynrrd's array)."""
    space = str(header.get("space", "")).lower()
    if space not in _SPACES:
        raise KneesegError(f"{label}: space '{header.get('space')}' is not one kneeseg reads "
                           "(left-posterior-superior or right-anterior-superior)")
    flip = np.array([*_SPACES[space], 1.0])
    rows = np.asarray(header.get("space directions"), float)
    spatial = rows[~np.isnan(rows).any(axis=1)] if rows.ndim == 2 else rows
    origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), float)
    if spatial.shape != (3, 3) or origin.shape != (3,) or len(shape) < 3:
        raise KneesegError(f"{label}: needs three spatial axes with 'space directions' and 'space origin'")
    spatial, origin = spatial * flip, origin * flip
    spacing = np.linalg.norm(spatial, axis=1)
    if not (spacing > 0).all():
        raise KneesegError(f"{label}: a spatial axis of zero length in 'space directions'")
    direction = (spatial / spacing[:, None]).T  # column i: the direction of voxel axis i
    return Geometry(size=tuple(int(s) for s in shape[-3:]), spacing=tuple(float(s) for s in spacing),
                    origin=tuple(float(o) for o in origin), direction=tuple(float(d) for d in direction.ravel()))


# ---- DICOM SEG -----------------------------------------------------------------------------------

def _is_dicom_seg(path: Path) -> bool:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return False
    return str(getattr(ds, "SOPClassUID", "")) == DICOM_SEG_SOP_CLASS


def _series_identity(image: Path) -> tuple[str, str, list[str]] | None:
    """(SeriesInstanceUID, FrameOfReferenceUID, SOPInstanceUIDs in slice order) of a DICOM series folder, else None."""
    if not image.is_dir():
        return None
    import pydicom

    from kneeseg.io.image import dicom_series_files

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(image)]
    first = headers[0]
    return (str(getattr(first, "SeriesInstanceUID", "")), str(getattr(first, "FrameOfReferenceUID", "")),
            [str(getattr(h, "SOPInstanceUID", "")) for h in headers])


def _first(item, *path: str):
    """``item.A[0].B[0]...`` or None where any step is missing."""
    for name in path:
        seq = getattr(item, name, None)
        if not seq:
            return None
        item = seq[0]
    return item


def _read_dicom_seg(label: Path, image: Path, grid: Geometry, labels: dict[str, int]) -> np.ndarray:
    import pydicom

    try:
        seg = pydicom.dcmread(label)
        frames = np.asarray(seg.pixel_array)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise KneesegError(f"{label}: cannot read DICOM SEG ({type(exc).__name__}: {str(exc).strip()[:120]})") from None
    frames = frames.reshape(-1, int(seg.Rows), int(seg.Columns))
    if str(getattr(seg, "SegmentationType", "BINARY")) == "FRACTIONAL":
        frames = frames >= float(getattr(seg, "MaximumFractionalValue", 255)) / 2
    frames = frames.astype(bool)
    names = {int(s.SegmentNumber): str(getattr(s, "SegmentLabel", "")) for s in getattr(seg, "SegmentSequence", [])}
    values = _match_names(label, names, labels, "segment label(s)")
    series = _series_identity(image)
    if series is not None:
        referenced = {str(s.SeriesInstanceUID) for s in getattr(seg, "ReferencedSeriesSequence", [])}
        frame_of_reference = str(getattr(seg, "FrameOfReferenceUID", ""))
        if series[0] not in referenced and series[1] != frame_of_reference:
            raise KneesegError(f"{label}: a DICOM SEG of another series than {image} (it references series "
                               f"{', '.join(sorted(referenced)) or 'none'} in frame of reference {frame_of_reference or 'none'})")
    shared = _first(seg, "SharedFunctionalGroupsSequence")
    per_frame = list(getattr(seg, "PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != len(frames):
        raise KneesegError(f"{label}: {len(frames)} frames but {len(per_frame)} per-frame descriptions")
    masks = {number: np.zeros(grid.shape_zyx, bool) for number in names}
    for i, (groups, pixels) in enumerate(zip(per_frame, frames)):
        number = int(getattr(_first(groups, "SegmentIdentificationSequence"), "ReferencedSegmentNumber", 0))
        if number not in masks:
            raise KneesegError(f"{label}: frame {i + 1} belongs to segment {number}, which the SEG does not describe")
        z, y, x = _frame_start(label, image, grid, groups, shared, pixels.shape, series, i)
        masks[number][z, y:y + pixels.shape[0], x:x + pixels.shape[1]] |= pixels
    return _combine(label, [(names[n], values[n], masks[n]) for n in sorted(names)], grid.shape_zyx)


def _frame_start(label: Path, image: Path, grid: Geometry, groups, shared, frame_shape, series, i: int) -> tuple[int, int, int]:
    """The (z, y, x) voxel of ``grid`` at frame ``i``'s first pixel; a frame off the grid is refused."""
    orientation = _first(groups, "PlaneOrientationSequence") or _first(shared, "PlaneOrientationSequence")
    measures = _first(groups, "PixelMeasuresSequence") or _first(shared, "PixelMeasuresSequence")
    d = np.asarray(grid.direction, float).reshape(3, 3)
    if orientation is not None:
        cosines = np.asarray([float(v) for v in orientation.ImageOrientationPatient])
        if (np.abs(cosines[:3] - d[:, 0]) > 1e-3).any() or (np.abs(cosines[3:] - d[:, 1]) > 1e-3).any():
            raise KneesegError(f"{label}: does not lie on the grid of {image} (frame orientation "
                               f"{tuple(round(float(c), 5) for c in cosines)} differs from the scan's)")
    if measures is not None and getattr(measures, "PixelSpacing", None) is not None:
        row, column = (float(v) for v in measures.PixelSpacing)  # between rows (y), between columns (x)
        if abs(row - grid.spacing[1]) > 1e-4 or abs(column - grid.spacing[0]) > 1e-4:
            raise KneesegError(f"{label}: does not lie on the grid of {image} (pixel spacing {column:g} x {row:g} mm "
                               f"differs from {grid.spacing[0]:g} x {grid.spacing[1]:g} mm)")
    position = _first(groups, "PlanePositionSequence")
    if position is not None and getattr(position, "ImagePositionPatient", None) is not None:
        index = _continuous_index([float(v) for v in position.ImagePositionPatient], grid)
    else:
        source = _first(groups, "DerivationImageSequence", "SourceImageSequence")
        uid = str(getattr(source, "ReferencedSOPInstanceUID", ""))
        if series is None or uid not in series[2]:
            raise KneesegError(f"{label}: frame {i + 1} has no position and its source slice is not in {image}")
        index = np.array([0.0, 0.0, float(series[2].index(uid))])
    rounded = np.round(index)
    x, y, z = (int(v) for v in rounded)
    inside = 0 <= z < grid.size[2] and 0 <= y and y + frame_shape[0] <= grid.size[1] and 0 <= x and x + frame_shape[1] <= grid.size[0]
    if (np.abs(index - rounded) > GRID_TOLERANCE).any() or not inside:
        raise KneesegError(f"{label}: does not lie on the grid of {image} (frame {i + 1} at voxel "
                           f"{tuple(round(float(v), 3) for v in index)} of the scan, outside it or between its voxels)")
    return z, y, x
