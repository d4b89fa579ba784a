"""Benchmark helper: is a bone's predicted surface shifted against the reference, and where does the
reference put its surface in the image?

For each bone it prints the missed and the extra voxels by their distance (in voxels) to the other
mask: a prediction that is only "tight" or "loose" loses voxels one voxel from the surface on one side
only, while a wrong piece lies deeper. With --image it also prints the mean intensity of one-voxel
shells inside and outside a surface, relative to the bone's core (6 voxels in): where a label stops
relative to the partial-volume edge of the bone. Prints figures; asserts nothing.

    python benchmarks/boundary_bias.py --pred PRED.nii.gz --ref LABELS.nii.gz [--image IMAGE.nii.gz]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from kneeseg.dataset.layout import KNEE_LABELS
from kneeseg.errors import KneesegError
from kneeseg.fingerprint import bbox_slices
from kneeseg.io.image import read_image


def _by_distance(voxels: np.ndarray, other: np.ndarray) -> list[int]:
    """How many of ``voxels`` lie 1, 2, 3 and more than 3 voxels from ``other``."""
    distance = ndimage.distance_transform_edt(~other)[voxels]
    edges = [0, 1, 2, 3, np.inf]
    return [int(((distance > a) & (distance <= b)).sum()) for a, b in zip(edges[:-1], edges[1:])]


def _shells(mask: np.ndarray, image: np.ndarray) -> list[float]:
    """Mean intensity of the shells 2 and 1 voxels inside and 1 and 2 voxels outside ``mask``'s
    surface, relative to the mean 6 voxels and more inside."""
    in1 = ndimage.binary_erosion(mask)
    in2 = ndimage.binary_erosion(in1)
    out1 = ndimage.binary_dilation(mask)
    out2 = ndimage.binary_dilation(out1)
    core = image[ndimage.binary_erosion(mask, iterations=6)].mean()
    return [float(image[m].mean() / core) for m in (in1 & ~in2, mask & ~in1, out1 & ~mask, out2 & ~out1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--image")
    args = p.parse_args()
    try:
        pred, _ = read_image(args.pred)
        ref, _ = read_image(args.ref)
        image = read_image(args.image, np.float32)[0] if args.image else None
    except KneesegError as e:
        p.error(str(e))
    for path, array in ((args.pred, pred), (args.image, image)):
        if array is not None and array.shape != ref.shape:
            p.error(f"{path}: shape {array.shape[::-1]} differs from the reference's {ref.shape[::-1]}")
    print(f"{args.pred} against {args.ref}")
    for name, value in KNEE_LABELS.items():
        r, q = ref == value, pred == value
        if value == 0 or not r.any() or not q.any():
            continue
        box = bbox_slices(r | q, 4)
        r, q = r[box], q[box]
        missed, extra = _by_distance(r & ~q, q), _by_distance(q & ~r, r)
        print(f"  {name:8s} reference {int(r.sum())} voxels; missed {sum(missed)} (1/2/3/>3 voxels from the prediction: "
              f"{'/'.join(map(str, missed))}); extra {sum(extra)} ({'/'.join(map(str, extra))})")
        if image is not None:
            for who, mask in (("reference", r), ("prediction", q)):
                print(f"           {who:10s} surface, intensity in2/in1 | out1/out2 (core = 1): "
                      "{:.3f}/{:.3f} | {:.3f}/{:.3f}".format(*_shells(mask, image[box])))


if __name__ == "__main__":
    main()
