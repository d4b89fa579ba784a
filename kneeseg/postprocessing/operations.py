"""Post-processing steps on a label map, each described by a small dict (postprocessing.json).

- ``{"op": "keep_largest_foreground", "n": 3}``: keep the n largest connected components of the
  union of all bones (the reference paper's "three largest components");
- ``{"op": "keep_largest", "label": L}``: keep the largest component of label L;
- ``{"op": "remove_small", "label": L, "min_voxels": N}``: drop components of L under N voxels;
- ``{"op": "fill_holes", "label": L}``: fill background enclosed by L;
- ``{"op": "closing", "label": L, "radius_mm": R}``: morphological closing of L with a ball of
  radius R mm (smooth surfaces, as the paper did), only into background.
Removed voxels become background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kneeseg.fingerprint import bbox_slices


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    components, n = ndimage.label(mask)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    return components, sizes


def _ball(radius_mm: float, spacing) -> np.ndarray:
    r = [max(1, int(np.floor(radius_mm / s))) for s in spacing]
    grids = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(r, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def apply_step(labels: np.ndarray, step: dict, spacing) -> np.ndarray:
    out = labels.copy()
    op = step["op"]
    if op == "keep_largest_foreground":
        mask = out > 0
        if not mask.any():
            return out
        box = bbox_slices(mask)  # components never leave the bounding box; labelling it is enough
        components, sizes = _components(mask[box])
        keep = np.argsort(sizes)[::-1][: step["n"]]
        keep = keep[sizes[keep] > 0]
        out[box][~np.isin(components, keep)] = 0
        return out
    mask = out == step["label"]
    if not mask.any():
        return out
    if op in ("keep_largest", "remove_small"):
        box = bbox_slices(mask)
        components, sizes = _components(mask[box])
        drop = components != int(np.argmax(sizes)) if op == "keep_largest" else sizes[components] < step["min_voxels"]
        out[box][mask[box] & drop] = 0
    elif op == "fill_holes":
        box = bbox_slices(mask, 1)  # enclosed background lies inside the bounding box
        region = out[box]
        region[ndimage.binary_fill_holes(mask[box]) & (region == 0)] = step["label"]
    elif op == "closing":
        # Pad so that closing near the border does not erode from the outside.
        k = _ball(step["radius_mm"], spacing)
        pad = max(k.shape) // 2 + 1
        box = bbox_slices(mask, pad)  # dilation reaches at most the ball's radius beyond the mask
        closed = ndimage.binary_closing(np.pad(mask[box], pad), structure=k)[tuple(slice(pad, -pad) for _ in range(3))]
        region = out[box]
        region[closed & (region == 0)] = step["label"]
    else:
        raise ValueError(f"unknown post-processing op '{op}'")
    return out


def apply_postprocessing(labels: np.ndarray, steps: list[dict], spacing) -> np.ndarray:
    for step in steps:
        labels = apply_step(labels, step, spacing)
    return labels
