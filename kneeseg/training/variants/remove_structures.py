"""kneesegTrainerRemoveStructures: in 30 % of the training patches one labelled structure is
replaced by the tissue around it.

A network trained on a few scans can learn to find a structure by its neighbours rather than by its
own look: trained on the real scan's half A, where the patella always lies in front of the femoral
trochlea, some models miss the front of half B's lateral condyle, which has no patella in front.
Removing a structure from a patch now and then shows the network its other structures without it:
the structure's voxels and a rim of partial volume are filled with the tissue around them, carried
inwards and smoothed, and its label becomes background. Not the default: on the real scan it
narrowed the spread of 60-minute runs without raising their level (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

from kneeseg.arrays import bbox_slices
from kneeseg.training.data import intensity_transforms, mirror_transforms, spatial_transform
from kneeseg.training.trainer import Trainer

MIN_SHELL_VOXELS = 50  # fewer surrounding voxels than this give no usable tissue to fill with
TEXTURE_SHARE = 0.25  # of the surrounding tissue's spread, added as ~1-voxel texture over the smooth fill


def remove_structure(image: np.ndarray, labels: np.ndarray, label: int, rim: int = 2, shell: int = 4,
                     rng: np.random.Generator | None = None) -> np.ndarray | None:
    """Fill ``label``'s voxels and a ``rim`` of voxels around them (not those of other labels) in every
    channel of ``image`` (C, Z, Y, X) with the background tissue of the ``shell`` beyond, carried
    inwards and smoothed, plus a little texture; set them to 0 in ``labels`` (Z, Y, X). Both are
    changed in place. Returns the filled region, or None (nothing changed) where the structure has
    too little background around it."""
    rng = rng or np.random.default_rng()
    target = labels == label
    region = ndimage.binary_dilation(target, iterations=rim) & ((labels == 0) | target)
    around = ndimage.binary_dilation(region, iterations=shell) & ~region & (labels == 0)
    if np.count_nonzero(around) < MIN_SHELL_VOXELS:
        return None
    box = bbox_slices(region, shell)
    inside, source = region[box], around[box]
    # Each voxel takes the nearest surrounding tissue voxel's value; smoothing then hides the seams.
    nearest = ndimage.distance_transform_edt(~source, return_distances=False, return_indices=True)
    texture = ndimage.gaussian_filter(rng.standard_normal(inside.shape), 1.0)
    texture /= max(float(texture.std()), 1e-6)
    for channel in image:
        local = channel[box]
        filled = ndimage.gaussian_filter(local[tuple(nearest)].astype(np.float32), 2.0)
        spread = TEXTURE_SHARE * float(local[source].std())
        local[inside] = (filled[inside] + spread * texture[inside]).astype(channel.dtype)
    labels[region] = 0
    return region


class RemoveStructureTransform(AbstractTransform):
    """Per sample, with probability ``p_per_sample``: pick one foreground label present in the patch
    and remove it (:func:`remove_structure`).

    numpy and scipy only: this runs in forked augmentation workers, as the other transforms do.
    """

    def __init__(self, p_per_sample: float = 0.2, rim: int = 2, shell: int = 4, data_key: str = "data",
                 label_key: str = "seg"):
        self.p_per_sample, self.rim, self.shell = p_per_sample, rim, shell
        self.data_key, self.label_key = data_key, label_key

    def __call__(self, **data_dict):
        data, seg = data_dict[self.data_key], data_dict[self.label_key]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            labels = seg[b, 0]
            present = [int(v) for v in np.unique(labels) if v > 0]
            if not present:
                continue
            label = present[np.random.randint(len(present))]
            rng = np.random.default_rng(np.random.randint(2**31))  # follows the worker's seeded global stream
            remove_structure(data[b], labels, label, self.rim, self.shell, rng)
        return data_dict


class kneesegTrainerRemoveStructures(Trainer):
    name = "kneesegTrainerRemoveStructures"
    share = 0.3  # of the patches; 0.6 lost marrow under the tibial plateau on the real scan

    def augmentation(self):
        # After the spatial transform (the structure is removed from what the network sees), before
        # the intensity transforms (which then treat the fill like any other tissue).
        return [spatial_transform(self.config.patch_size), RemoveStructureTransform(self.share), *intensity_transforms(),
                *mirror_transforms(self.config.training.mirror_axes)]
