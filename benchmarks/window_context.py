"""Benchmark helper: does a model's verdict on one voxel depend on where that voxel sits in the window?

Sliding-window prediction sees each voxel from a few windows. When a model gets a region wrong in
some runs and right in others, this asks what context decides it: it predicts N single windows (no
mirroring) placed at random so that the voxel falls at a uniformly random position inside each, and
prints the voxel's mean class probabilities, how often each class wins, and the probability of
``--label`` by the voxel's relative position along each axis of the canonical array, whose indices
run toward superior, posterior and left (fifths of the window: 0 = the window lies mostly on the
superior / posterior / left side of the voxel, 4 = mostly on the other). Windows are clipped to the
image, so near a border some fifths stay empty ("-"). Prints figures; asserts nothing.

    python benchmarks/window_context.py --model MODEL_FOLDER --image IMAGE_0000.nii.gz \
        --voxel X Y Z [--label 1] [--windows 120] [--seed 0]

The voxel is an image index in SimpleITK's (x, y, z) order, as ITK-SNAP and 3D Slicer show it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kneeseg.cli.common import positive_int
from kneeseg.errors import KneesegError
from kneeseg.inference.acquisition import needs_zeroed_air, with_air_zeroed
from kneeseg.inference.model import load_model
from kneeseg.inference.predictor import Predictor
from kneeseg.inference.sliding_window import predict_sliding_window
from kneeseg.io.image import read_image
from kneeseg.io.orientation import Orientation
from kneeseg.preprocessing.preprocess import preprocess_case


def voxel_in_preprocessed(voxel_xyz: list[int], shape_zyx: tuple, properties: dict) -> np.ndarray:
    """The (z, y, x) index in the preprocessed array nearest to an image voxel given as (x, y, z)."""
    marker = np.zeros(shape_zyx, bool)
    marker[tuple(reversed(voxel_xyz))] = True
    canonical = np.argwhere(Orientation.from_dict(properties["orientation"]).to_canonical(marker))[0]
    crop_start = np.array([lo for lo, _ in properties["crop_bbox"]])
    scale = np.array(properties["shape_after_resampling"]) / np.array(properties["shape_after_crop"])
    inside = np.floor((canonical - crop_start + 0.5) * scale).astype(int)
    return np.clip(inside, 0, np.array(properties["shape_after_resampling"]) - 1)


def window_probabilities(network, data: np.ndarray, centre: np.ndarray, patch: np.ndarray, num_classes: int,
                         autocast: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax at ``centre`` from ``n`` windows, and the centre's relative position (0-1) in each."""
    shape = np.array(data.shape[1:])
    probabilities, positions = [], []
    for _ in range(n):
        start = np.clip(centre - rng.integers(0, patch), 0, np.maximum(shape - patch, 0))
        at = centre - start
        tile = data[(slice(None), *(slice(s, s + p) for s, p in zip(start, patch)))]
        # One window of the predictor's own sliding window (its padding, precision and output handling).
        probs = predict_sliding_window(network, tile, patch.tolist(), num_classes, autocast=autocast)
        probabilities.append(probs[(slice(None), *at)])
        positions.append(at / patch)
    return np.array(probabilities), np.array(positions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="a trained model folder (plans.json, fold_N)")
    p.add_argument("--image", required=True)
    p.add_argument("--voxel", required=True, type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--label", type=int, default=1, help="the label whose probability is broken down by position")
    p.add_argument("--windows", type=positive_int, default=120)
    p.add_argument("--seed", type=int, default=0, help="where the windows fall")
    args = p.parse_args()
    try:
        predictor = Predictor(load_model(args.model), tta=False)
        image, geometry = read_image(args.image, np.float32)
    except KneesegError as e:
        p.error(str(e))
    if not all(0 <= v < s for v, s in zip(args.voxel, geometry.size)):
        p.error(f"{args.image}: voxel {args.voxel} lies outside the image's size {list(geometry.size)}")
    labels = predictor.label_values
    if args.label not in labels:
        p.error(f"--label {args.label} is not one of the model's labels {labels}")
    images = with_air_zeroed([image]) if needs_zeroed_air(predictor.config, image) else [image]  # as the predictor does
    case = preprocess_case(images, geometry, predictor.config)
    centre = voxel_in_preprocessed(args.voxel, image.shape, case.properties)
    patch = np.array(predictor.config.patch_size)
    data = np.ascontiguousarray(case.data, dtype=np.float32)
    print(f"{args.image}, voxel {args.voxel} -> preprocessed {centre.tolist()} of {list(data.shape[1:])}, "
          f"window {patch.tolist()}, {args.windows} windows per fold")
    column = labels.index(args.label)
    for fold, network in zip(predictor.model.checkpoints, predictor.networks):
        probs, positions = window_probabilities(network, data, centre, patch, len(labels), predictor.autocast,
                                                np.random.default_rng(args.seed), args.windows)
        wins = np.bincount(probs.argmax(1), minlength=len(labels)) / len(probs)
        print(f"{fold.parent.name}: mean probability " + ", ".join(f"{v}: {m:.2f}" for v, m in zip(labels, probs.mean(0)))
              + " | wins " + ", ".join(f"{v}: {w:.2f}" for v, w in zip(labels, wins)))
        for axis, towards in enumerate(("superior", "posterior", "left")):
            fifth = np.minimum((positions[:, axis] * 5).astype(int), 4)
            means = [f"{probs[fifth == k, column].mean():.2f}" if (fifth == k).any() else "-" for k in range(5)]
            print(f"  P(label {args.label}) by fifth of the window, axis {axis} (toward {towards}): {' '.join(means)}")


if __name__ == "__main__":
    main()
