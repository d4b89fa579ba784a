"""Choosing post-processing on cross-validation predictions (kneeseg_find_postprocessing).

Candidates, tried in this order and kept greedily: per bone, give its pieces glued to another bone
over more than a fifth of their surface that bone's label (relabel_enclosed with ATTACHED_SHARE), or
else those mostly wrapped in it (more than half); where the labels name a patella and a femur, drop
the patella's pieces that do not lie in front of the femur's centre (keep_side: the one placement
rule that holds in every knee scan whatever its field of view); per bone but the largest (the femur, which the
others face across a joint), drop its pieces farther from the largest bone than three times the
widest gap between the two in the training labels, and never nearer than FAR_MIN_MM (remove_far: a
joint space is a few mm, so this only takes what is plainly elsewhere); per bone, keep the largest
component and give its other pieces that touch another bone that bone's label (if that scores no
worse than dropping them), or else drop them; keep the n largest foreground components (n = number
of bones); per bone, remove components under 10 % of the smallest volume of that bone in the
training labels that show it, giving those that touch another bone that bone's label if that scores
no worse than dropping them (after keep-largest too: a bone whose one piece is that small is a
stray, such as a "patella" in a scan that shows none, or a piece of the bone it touches), fill holes
in its slices, fill holes in 3D, and a closing with a 1-voxel (coarsest axis) ball. Relabelling
comes first because a network's bone/background call is more reliable than its femur/tibia call: a
block of femur called tibia is bone, and dropping it leaves a hole in the femur. Relabelling
enclosed pieces, component removal (far pieces and misplaced ones too) and slice-wise hole filling are kept unless they
lower the mean Dice over all cases and bones (each bone is one piece, apart from the others, near
its joint, with no holes in its cross-sections: nnU-Net's rule, and anatomy's); 3D filling and
closing only if they raise it, or leave it equal (within 1e-6) while lowering the mean ASSD. A
candidate that the steps already kept make a no-op (keeping the largest piece of a bone already kept
in one piece; removing small pieces a second time; 3D filling after slice-wise) is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from kneeseg.dataset.layout import foreground_labels
from kneeseg.errors import KneesegError
from kneeseg.evaluation.metrics import binary_metrics
from kneeseg.io import atomic_write_json, read_image
from kneeseg.postprocessing.operations import OPERATIONS, apply_step, gap_mm

TOLERANCE = 1e-6
# remove_far never takes pieces nearer than this to the largest bone, however close the training labels
# put the bones (a patella alta, or a knee scanned in flexion, lies farther from the femur than most).
FAR_MIN_MM = 20.0
FAR_GAP_FACTOR = 3.0
# Bones never touch in the labels. On the real scan, the pieces of femur that 60-minute half-A models
# called patella in half B (which shows none; as recorded, at 1 mm, in 3 mm slices, under gamma 0.5 and
# 2) had 26-49 % of their face neighbours in the femur; the whole bones of those predictions and of
# half A's at most 1 % in another bone (0 % for the true patella): a fifth tells them apart.
ATTACHED_SHARE = 0.2
# (bone, side, of which bone) by lower-case label name, as kneeseg.inference.qc judges anatomy. Half-A
# models of the real scan left 2.4-3.7 ml "patellae" apart from every bone in half B (which shows none:
# 3 mm slices, gamma 0.5, a field of view cutting the shafts), each 8-20 mm behind the femur's centre.
PLACEMENT = (("patella", "anterior", "femur"),)


class _Case(NamedTuple):
    """One cross-validation case: its reference, its prediction and the scan's geometry (z, y, x)."""

    ref: np.ndarray
    pred: np.ndarray
    spacing: tuple[float, ...]
    direction: tuple[float, ...]  # the scan's direction cosines, row-major


def _implied(candidate: dict, steps: list[dict], bones: dict[str, int]) -> bool:
    """True when the steps kept so far already do what ``candidate`` would (it could change nothing)."""
    largest = {st["label"] for st in steps if st["op"] == "keep_largest"}
    if candidate["op"] == "relabel_enclosed":  # pieces over half wrapped were over a fifth attached
        return any(st["op"] == "relabel_enclosed" and st["label"] == candidate["label"] for st in steps)
    if candidate["op"] == "fill_holes":  # a hole enclosed in 3D is enclosed in every slice through it
        return any(st["op"] == "fill_holes_slices" and st["label"] == candidate["label"] for st in steps)
    if candidate["op"] == "keep_largest":  # its other pieces are gone but those too large to drop (SECOND_BONE)
        return candidate["label"] in largest
    if candidate["op"] == "remove_small":  # its small pieces are gone, whichever way they went
        return any(st["op"] == "remove_small" and st["label"] == candidate["label"] for st in steps)
    # One piece per bone, or more where a bone's second is too large to drop: then the union's n largest
    # pieces could drop a bone, which keep_largest kept on purpose; not tried.
    if candidate["op"] == "keep_largest_foreground":
        return candidate["n"] >= len(bones) and set(bones.values()) <= largest
    return False


def _far_candidates(cases: list[_Case], bones: dict[str, int], anchor: int) -> list[dict]:
    """remove_far for each bone but ``anchor`` (the largest), with a distance from the training labels' gaps."""
    candidates = []
    for v in (v for v in bones.values() if v != anchor):
        gaps = [gap_mm(c.ref == v, c.ref == anchor, c.spacing) for c in cases]
        gaps = [g for g in gaps if np.isfinite(g)]
        if gaps:  # a pair never seen together says nothing about how far apart it may be
            max_mm = max(FAR_MIN_MM, FAR_GAP_FACTOR * max(gaps))
            candidates.append({"op": "remove_far", "label": v, "from": anchor, "max_mm": round(max_mm, 2)})
    return candidates


def _scores(cases: list[_Case], predictions, labels: dict[str, int], with_distance: bool) -> tuple[float, float]:
    """Mean Dice (and mean ASSD) over cases and bones of ``predictions`` (one label map per case)."""
    dice, assd = [], []
    for case, post in zip(cases, predictions):
        for value in labels.values():
            if with_distance:
                m = binary_metrics(case.ref == value, post == value, case.spacing)
                dice.append(m["dice"])
                assd.append(m["assd"])
            else:
                r, p = case.ref == value, post == value
                denom = r.sum() + p.sum()
                dice.append(1.0 if denom == 0 else 2 * np.logical_and(r, p).sum() / denom)
    return float(np.mean(dice)), float(np.mean(assd)) if assd else 0.0


def choose_postprocessing(pairs: list[tuple[Path, Path]], labels: dict[str, int], output: Path | None = None,
                          progress: bool = True) -> dict:
    """Pick steps on (reference, cross-validation prediction) file pairs; write ``output`` if given."""
    from tqdm import tqdm

    cases: list[_Case] = []
    for ref_path, pred_path in pairs:
        ref, geometry = read_image(ref_path)
        pred, pred_geometry = read_image(pred_path)
        problem = geometry.matches(pred_geometry)
        if problem:
            raise KneesegError(f"{pred_path}: cross-validation prediction does not match its reference {ref_path} ({problem})")
        cases.append(_Case(ref, pred.astype(np.uint8), geometry.spacing_zyx, geometry.direction))
    bones = foreground_labels(labels)
    volumes = {v: [float((c.ref == v).sum() * np.prod(c.spacing)) for c in cases] for v in bones.values()}  # mm³
    # A case without the bone (a scan that does not show it) says nothing about how small it can be.
    smallest = {v: min((mm3 for mm3 in per_case if mm3), default=0.0) for v, per_case in volumes.items()}
    largest_bone = max(volumes, key=lambda v: sum(volumes[v]))
    coarsest = max(max(c.spacing) for c in cases)
    candidates = [{"op": "relabel_enclosed", "label": v, **extra} for v in bones.values()
                  for extra in ({"share": ATTACHED_SHARE}, {})]
    named = {name.lower(): v for name, v in bones.items()}
    candidates += [{"op": "keep_side", "label": named[bone], "of": named[of], "side": side}
                   for bone, side, of in PLACEMENT if bone in named and of in named]
    candidates += _far_candidates(cases, bones, largest_bone)
    candidates += [{"op": "keep_largest", "label": v, **extra} for v in bones.values() for extra in ({"fragments": "neighbour"}, {})]
    candidates.append({"op": "keep_largest_foreground", "n": len(bones)})
    for v in bones.values():
        candidates += [
            *({"op": "remove_small", "label": v, "min_mm3": round(smallest[v] / 10, 3), **extra}
              for extra in ({"fragments": "neighbour"}, {}) if smallest[v] > 0),  # a bone no label shows: no size
            {"op": "fill_holes_slices", "label": v},
            {"op": "fill_holes", "label": v},
            {"op": "closing", "label": v, "radius_mm": round(coarsest, 4)},
        ]
    current = [c.pred for c in cases]  # predictions after the steps kept so far
    steps: list[dict] = []
    base_dice, base_assd = _scores(cases, current, bones, with_distance=True)
    start = (base_dice, base_assd)
    decisions = []
    spare = None  # (step, trial, mean Dice) of dropping pieces, made on ``current`` while judging relabelling

    def attempt(step: dict) -> tuple[list[np.ndarray], float]:
        if spare is not None and spare[0] == step:  # the trial the relabelling candidate was judged against
            return spare[1], spare[2]
        trial = [apply_step(pred, step, c.spacing, c.direction) for pred, c in zip(current, cases)]
        return trial, _scores(cases, trial, bones, with_distance=False)[0]

    for candidate in tqdm(candidates, desc="post-processing candidates", disable=not progress):
        if _implied(candidate, steps, bones):  # a no-op at prediction time too: not worth its seconds
            decisions.append({**candidate, "kept": False, "implied_by_kept_steps": True})
            continue
        trial, dice = attempt(candidate)
        spare = None
        if OPERATIONS[candidate["op"]].anatomy:
            # A bone is one solid piece, apart from the others: dropping its other pieces (or relabelling
            # those wrapped in another bone, or filling its cross-sections) is kept unless it costs Dice
            # (nnU-Net's rule for components), so that an error the validation cases happen not to have
            # is still dealt with later.
            keep = dice >= base_dice - TOLERANCE
            if keep and candidate.get("fragments") == "neighbour":
                # Relabelling must also do no worse than dropping the same pieces: a stray blob beside
                # another bone would otherwise only move from one bone's false positives to the other's.
                plain = {k: v for k, v in candidate.items() if k != "fragments"}
                spare = (plain, *attempt(plain))  # the next candidate: not made twice if this one is rejected
                keep = dice >= spare[2] - TOLERANCE
        else:
            keep = dice > base_dice + TOLERANCE
            if not keep and abs(dice - base_dice) <= TOLERANCE:
                keep = _scores(cases, trial, bones, with_distance=True)[1] < base_assd - TOLERANCE
        decisions.append({**candidate, "mean_dice": dice, "kept": bool(keep)})
        if keep:
            steps.append(candidate)
            current, spare = trial, None
            base_dice, base_assd = _scores(cases, current, bones, with_distance=True)
    result = {"steps": steps, "cv_cases": len(cases), "mean_dice_before": start[0], "mean_assd_before": start[1],
              "mean_dice_after": base_dice, "mean_assd_after": base_assd, "candidates": decisions}
    if output is not None:
        atomic_write_json(output, result)
    return result
