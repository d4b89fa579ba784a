"""Bone statistics of a label map: volume, connected components and bounding box in scanner space.

Per bone: its voxel count, volume in mm^3 and ml (voxels x voxel volume), the number of connected
components (face connectivity, as the post-processing's keep-the-largest-component counts them: 1
means one piece) and the bounding box in scanner (LPS) millimetres: the minimum and maximum, per
axis, of the bone's voxel centres mapped through the image's origin, direction and spacing (for an
oblique scan this is the box aligned with the scanner axes, not with the voxel grid). With
``--stl``, also the surface area in mm^2 of the bone's mesh as written (smoothed, so a little less
than the voxel staircase's area); otherwise null. A bone absent from the map has volume 0,
0 components and no box (null).

``kneeseg_predict --statistics`` writes ``CASE.statistics.json`` beside each output and, for a
folder of scans, ``statistics.csv`` in the output folder (one row per case and bone).

Each case also records how sure the model was: ``uncertain_share``, the share of the voxels it
called bone whose winning probability was under 0.9 (kneeseg.inference.qc; null where it found no
bone). A folder run writes ``review_order.csv`` beside the table: one row per case, the least sure
first (the cases where it found no bone at all before every other), so that a person correcting
predictions for fine-tuning starts with the scans the model read worst.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from kneeseg.io import Geometry, atomic_write_json, atomic_write_text, read_json, strip_ending
from kneeseg.io.protect import starts_with

CSV_COLUMNS = ("case", "bone", "label", "voxels", "volume_mm3", "volume_ml", "components",
               "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
               "surface_area_mm2", "uncertain_share")
_TABLE_MARK = ",".join(CSV_COLUMNS[:13]).encode()  # the header's start, as tables without the later columns began too
REVIEW_COLUMNS = ("rank", "case", "uncertain_share", "qc_warnings", "label_map")
_CHUNK = 1_000_000  # voxel centres mapped at a time


def _physical_bounds(mask: np.ndarray, geometry: Geometry) -> tuple[list[float], list[float]] | None:
    zyx = np.argwhere(mask)
    if not len(zyx):
        return None
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for start in range(0, len(zyx), _CHUNK):
        points = geometry.index_to_physical(zyx[start:start + _CHUNK, ::-1].astype(np.float64))
        low, high = np.minimum(low, points.min(0)), np.maximum(high, points.max(0))
    return [float(v) for v in low], [float(v) for v in high]


def bone_statistics(labels: np.ndarray, geometry: Geometry, bones: dict[str, int],
                    surface_areas: dict[str, float] | None = None) -> list[dict]:
    """One dict per bone of ``bones`` (name -> label value, background left out) for the (z, y, x)
    label map ``labels`` on ``geometry``; ``surface_areas``: each bone's mesh surface area in mm^2,
    where meshes were made (kneeseg.export.stl), else None in the rows."""
    voxel_mm3 = float(np.prod(geometry.spacing))
    rows = []
    for name, value in sorted(bones.items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        mask = labels == value
        voxels = int(np.count_nonzero(mask))
        components = int(ndimage.label(mask)[1]) if voxels else 0
        bounds = _physical_bounds(mask, geometry)
        rows.append({
            "bone": name,
            "label": int(value),
            "voxels": voxels,
            "volume_mm3": voxels * voxel_mm3,
            "volume_ml": voxels * voxel_mm3 / 1000.0,
            "components": components,
            "bbox_lps_mm": None if bounds is None else {"min": bounds[0], "max": bounds[1]},
            "surface_area_mm2": (surface_areas or {}).get(name),
        })
    return rows


def statistics_path(output: Path) -> Path:
    """``CASE.statistics.json`` beside the output ``CASE.<ext>``."""
    return Path(output).with_name(strip_ending(output) + ".statistics.json")


def write_case_statistics(path: Path, case_id: str, output: Path, inputs: list[Path], model_folder: Path,
                          geometry: Geometry, bones: list[dict], qc_warnings: list[str], uncertain_share: float | None = None) -> None:
    """The statistics JSON of one case, atomically; ``qc_warnings``: the prediction's (kneeseg.inference.qc)
    and the acquisition's warnings, empty when nothing looked wrong; ``uncertain_share``: the
    prediction's (kneeseg.inference.qc.uncertain_share)."""
    atomic_write_json(path, {
        "case": case_id,
        "label_map": str(output),
        "inputs": [str(p) for p in inputs],
        "model": str(model_folder),
        "spacing_mm": list(geometry.spacing),
        "voxel_volume_mm3": float(np.prod(geometry.spacing)),
        "connectivity": "face (6-connected)",
        "coordinates": "scanner LPS millimetres (as ITK/SimpleITK and 3D Slicer's files)",
        "bones": bones,
        "qc_warnings": qc_warnings,
        "uncertain_share": uncertain_share,
    })


def csv_rows(case_id: str, bones: list[dict], uncertain_share: float | None = None) -> list[dict]:
    rows = []
    for b in bones:
        box = b["bbox_lps_mm"]
        corners = [*box["min"], *box["max"]] if box else [""] * 6
        area = b.get("surface_area_mm2")  # absent from statistics written before meshes had areas
        rows.append(dict(zip(CSV_COLUMNS, [case_id, b["bone"], b["label"], b["voxels"], b["volume_mm3"], b["volume_ml"],
                                            b["components"], *corners, "" if area is None else area,
                                            "" if uncertain_share is None else uncertain_share])))
    return rows


def review_order_path(statistics_csv: Path) -> Path:
    """``review_order.csv`` beside ``statistics.csv`` (``review_order_partKofN.csv`` beside a part's table)."""
    return statistics_csv.with_name(statistics_csv.name.replace("statistics", "review_order", 1))


def review_rows(cases: list[dict]) -> list[dict]:
    """The cases (dicts with case, uncertain_share, qc_warnings, label_map; ``unrecorded`` for those
    whose statistics predate the share) least sure first: those with no bone found (no share), then by
    falling share, then those with no share recorded; ties by case id."""
    ordered = sorted(cases, key=lambda c: (c.get("unrecorded", False), c["uncertain_share"] is not None,
                                           -(c["uncertain_share"] or 0.0), c["case"]))
    return [{"rank": rank, "case": c["case"], "uncertain_share": "" if c["uncertain_share"] is None else c["uncertain_share"],
             "qc_warnings": len(c["qc_warnings"]), "label_map": c["label_map"]} for rank, c in enumerate(ordered, start=1)]


def is_review_order(path: Path) -> bool:
    """Whether ``path`` is a review order kneeseg wrote (its header line)."""
    return starts_with(path, ",".join(REVIEW_COLUMNS).encode())


def is_statistics_table(path: Path) -> bool:
    """Whether ``path`` is a statistics table kneeseg wrote (its header line; that of tables written
    before surface areas were added included)."""
    return starts_with(path, _TABLE_MARK)


def write_statistics_csv(path: Path, rows: list[dict], columns: tuple[str, ...] = CSV_COLUMNS) -> None:
    """One CSV row per case and bone (rows from :func:`csv_rows`; or of ``columns``), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


class StudyStatistics:
    """``--statistics`` for a study: called after each case (kneeseg.inference.study's AfterCase), it
    writes ``CASE.statistics.json``; :meth:`finish` writes the study's CSV (``csv_path``; None for a
    single output file) and the review order beside it. Cases a resumed study skips (``done``) keep
    their JSON and get their rows from it.
    ``surface_areas``: case id -> bone -> mesh surface area, filled by the mesh hook that runs first."""

    def __init__(self, model_folder: Path, bones: dict[str, int], csv_path: Path | None, done: Sequence = (),
                 surface_areas: dict[str, dict[str, float]] | None = None):
        self.model_folder, self.bones, self.csv_path = model_folder, bones, csv_path
        self.surface_areas = surface_areas if surface_areas is not None else {}
        self.rows: list[dict] = []
        self.cases: list[dict] = []  # case, uncertain_share, qc_warnings, label_map: for the review order
        for case in done:
            path = statistics_path(case.output)
            if path.exists():
                stats = read_json(path)
                share = stats.get("uncertain_share")  # absent from statistics written before it was recorded
                self.rows.extend(csv_rows(case.case_id, stats["bones"], share))
                self.cases.append({"case": case.case_id, "uncertain_share": share, "qc_warnings": stats.get("qc_warnings", []),
                                   "label_map": str(case.output), "unrecorded": "uncertain_share" not in stats})

    def __call__(self, case, image: np.ndarray, labels: np.ndarray, geometry: Geometry, warnings: list[str],
                 uncertain_share: float | None = None) -> None:
        bones = bone_statistics(labels, geometry, self.bones, self.surface_areas.get(case.case_id))
        write_case_statistics(statistics_path(case.output), case.case_id, case.output, list(case.channels),
                              self.model_folder, geometry, bones, warnings, uncertain_share)
        self.rows.extend(csv_rows(case.case_id, bones, uncertain_share))
        self.cases.append({"case": case.case_id, "uncertain_share": uncertain_share, "qc_warnings": list(warnings),
                           "label_map": str(case.output)})

    def finish(self) -> None:
        """The CSV of every case written (also when some failed: the others' rows), and the review order."""
        if self.csv_path is not None and self.rows:
            write_statistics_csv(self.csv_path, sorted(self.rows, key=lambda r: (r["case"], r["label"])))
            write_statistics_csv(review_order_path(self.csv_path), review_rows(self.cases), REVIEW_COLUMNS)
