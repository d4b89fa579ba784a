"""Segmentation metrics for one binary structure, distances in millimetres.

- Dice, IoU (Jaccard), sensitivity (recall), precision, volume similarity 1 - |P-R| / (P+R).
- HD95: the larger of the two directed 95th-percentile surface distances (surface voxels: those
  with a 6-neighbour outside the mask).
- ASSD: mean of all surface-to-surface distances in both directions.
- Average Hausdorff distance, from the two directed mean distances: the mean distance from every
  voxel of one set to the nearest voxel of the other (voxels shared by both count 0, so both are
  small for good overlaps). Two definitions are in use, and both are reported:
  - ``avg_hausdorff_max``: the larger of the two directed means (Taha & Hanbury 2015; kneeseg's);
  - ``avg_hausdorff_mean``: the mean of the two directed means, what ITK's HausdorffDistanceImageFilter
    (GetAverageHausdorffDistance) and so pymia report; the reference paper's 0.0223 was measured
    with pymia, so compare it with this one. It is between half of ``avg_hausdorff_max`` and all of it.

Empty masks, by definition here:
- both empty: every overlap score 1, every distance 0;
- one empty: Dice, IoU and volume similarity 0; sensitivity 1 if the reference is empty (nothing to
  find), precision 1 if the prediction is empty (nothing claimed); every distance is the diagonal
  of the image in mm, the worst a distance can be, so that misses weigh in means.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kneeseg.arrays import bbox_slices
from kneeseg.dataset.layout import foreground_labels

METRICS = ("dice", "iou", "hd95", "assd", "avg_hausdorff_max", "avg_hausdorff_mean", "volume_similarity", "sensitivity",
           "precision", "ref_volume_mm3", "pred_volume_mm3")


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def binary_metrics(ref: np.ndarray, pred: np.ndarray, spacing) -> dict[str, float]:
    """All METRICS for boolean masks ``ref`` and ``pred`` on a grid of ``spacing`` (z, y, x) mm."""
    ref, pred = ref.astype(bool), pred.astype(bool)
    voxel = float(np.prod(spacing))
    r, p = int(ref.sum()), int(pred.sum())
    out = {"ref_volume_mm3": r * voxel, "pred_volume_mm3": p * voxel}
    if r == 0 and p == 0:
        return {**out, "dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0, "avg_hausdorff_max": 0.0, "avg_hausdorff_mean": 0.0,
                "volume_similarity": 1.0, "sensitivity": 1.0, "precision": 1.0}
    if r == 0 or p == 0:
        worst = float(np.sqrt(np.sum((np.asarray(ref.shape) * np.asarray(spacing)) ** 2)))
        return {**out, "dice": 0.0, "iou": 0.0, "hd95": worst, "assd": worst, "avg_hausdorff_max": worst, "avg_hausdorff_mean": worst,
                "volume_similarity": 0.0, "sensitivity": 1.0 if r == 0 else 0.0, "precision": 1.0 if p == 0 else 0.0}
    tp = int(np.logical_and(ref, pred).sum())
    box = bbox_slices(ref | pred, 2)
    ref_c, pred_c = ref[box], pred[box]
    to_ref = ndimage.distance_transform_edt(~ref_c, sampling=spacing)  # distance of every voxel to the reference
    to_pred = ndimage.distance_transform_edt(~pred_c, sampling=spacing)
    directed = (float(to_ref[pred_c].mean()), float(to_pred[ref_c].mean()))  # prediction -> reference, and back
    ref_surf, pred_surf = _surface(ref_c), _surface(pred_c)
    to_ref_surf = ndimage.distance_transform_edt(~ref_surf, sampling=spacing)
    to_pred_surf = ndimage.distance_transform_edt(~pred_surf, sampling=spacing)
    d_pred = to_ref_surf[pred_surf]  # prediction surface -> reference surface
    d_ref = to_pred_surf[ref_surf]
    return {
        **out,
        "dice": 2 * tp / (r + p),
        "iou": tp / (r + p - tp),
        "hd95": float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95))),
        "assd": float(np.concatenate([d_pred, d_ref]).mean()),
        "avg_hausdorff_max": max(directed),
        "avg_hausdorff_mean": (directed[0] + directed[1]) / 2,
        "volume_similarity": 1 - abs(p - r) / (p + r),
        "sensitivity": tp / r,
        "precision": tp / p,
    }


def label_metrics(ref: np.ndarray, pred: np.ndarray, spacing, labels: dict[str, int]) -> dict[str, dict[str, float]]:
    """Metrics per named label, plus 'all_bones': the binary union of every foreground label."""
    result = {name: binary_metrics(ref == value, pred == value, spacing) for name, value in foreground_labels(labels).items()}
    result["all_bones"] = binary_metrics(ref > 0, pred > 0, spacing)
    return result


def largest_disagreement(ref: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, ...], int] | None:
    """(a voxel near the middle of, size in voxels of) the largest region where the label maps differ,
    judged on its core (one erosion): 1-voxel boundary disagreements join into a shell around every
    bone, which is not where a person should look first. None when the maps agree."""
    differ = ref != pred
    if not differ.any():
        return None
    box = bbox_slices(differ, 1)
    differ = differ[box]
    core = ndimage.binary_erosion(differ)
    core = core if core.any() else differ
    regions, _ = ndimage.label(core, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    largest = regions == sizes.argmax()
    voxels = np.argwhere(largest)
    middle = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]  # a voxel of it, nearest its centroid
    size = int(np.count_nonzero(ndimage.binary_dilation(largest) & differ))  # the core and its rim
    return tuple(int(m + b.start) for m, b in zip(middle, box)), size
