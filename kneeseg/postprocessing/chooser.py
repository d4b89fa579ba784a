"""Choosing post-processing on cross-validation predictions (kneeseg_find_postprocessing).

Candidates, tried in this order and kept greedily, each only if it raises the mean Dice over all
cases and bones, or leaves it equal (within 1e-6) while lowering the mean ASSD:
keep the n largest foreground components (n = number of bones); per bone: keep the largest
component, remove components under 10 % of the smallest volume of that bone in the training
labels, fill holes, and a closing with a 1-voxel (coarsest axis) ball.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneeseg.evaluation.metrics import binary_metrics
from kneeseg.io import atomic_write_json, read_image
from kneeseg.postprocessing.operations import apply_postprocessing

TOLERANCE = 1e-6


def _scores(cases, steps, labels: dict[str, int], with_distance: bool) -> tuple[float, float]:
    dice, assd = [], []
    for ref, pred, spacing in cases:
        post = apply_postprocessing(pred, steps, spacing)
        for value in labels.values():
            if value == 0:
                continue
            if with_distance:
                m = binary_metrics(ref == value, post == value, spacing)
                dice.append(m["dice"])
                assd.append(m["assd"])
            else:
                r, p = ref == value, post == value
                denom = r.sum() + p.sum()
                dice.append(1.0 if denom == 0 else 2 * np.logical_and(r, p).sum() / denom)
    return float(np.mean(dice)), float(np.mean(assd)) if assd else 0.0


def choose_postprocessing(pairs: list[tuple[Path, Path]], labels: dict[str, int], output: Path | None = None,
                          progress: bool = True) -> dict:
    """Pick steps on (reference, cross-validation prediction) file pairs; write ``output`` if given."""
    from tqdm import tqdm

    cases = []
    for ref_path, pred_path in pairs:
        ref, geometry = read_image(ref_path)
        pred, _ = read_image(pred_path)
        cases.append((ref, pred.astype(np.uint8), geometry.spacing_zyx))
    bones = {k: v for k, v in labels.items() if v != 0}
    smallest = {v: min(int((ref == v).sum()) for ref, _, _ in cases) for v in bones.values()}
    coarsest = max(max(s) for _, _, s in cases)
    candidates = [{"op": "keep_largest_foreground", "n": len(bones)}]
    for v in bones.values():
        candidates += [
            {"op": "keep_largest", "label": v},
            {"op": "remove_small", "label": v, "min_voxels": max(1, smallest[v] // 10)},
            {"op": "fill_holes", "label": v},
            {"op": "closing", "label": v, "radius_mm": round(coarsest, 4)},
        ]
    steps: list[dict] = []
    base_dice, base_assd = _scores(cases, steps, bones, with_distance=True)
    start = (base_dice, base_assd)
    decisions = []
    for candidate in tqdm(candidates, desc="post-processing candidates", disable=not progress):
        dice, assd = _scores(cases, steps + [candidate], bones, with_distance=False), None
        dice = dice[0]
        keep = dice > base_dice + TOLERANCE
        if not keep and abs(dice - base_dice) <= TOLERANCE:
            dice, assd = _scores(cases, steps + [candidate], bones, with_distance=True)
            keep = assd < base_assd - TOLERANCE
        decisions.append({**candidate, "mean_dice": dice, "kept": bool(keep)})
        if keep:
            steps.append(candidate)
            base_dice, base_assd = _scores(cases, steps, bones, with_distance=True)
    result = {"steps": steps, "cv_cases": len(cases), "mean_dice_before": start[0], "mean_assd_before": start[1],
              "mean_dice_after": base_dice, "mean_assd_after": base_assd, "candidates": decisions}
    if output is not None:
        atomic_write_json(output, result)
    return result
