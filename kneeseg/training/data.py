"""Patches from the preprocessed cache, augmented with batchgenerators in background processes.

- A third of each batch (the last round(B / 3) samples; for a batch of one, each sample with
  probability 1/3) is centred on a random voxel of a random foreground class present in the case
  (foreground oversampling); the rest is placed uniformly.
- The loader cuts a patch larger than the network's, so that rotation and scaling never pull in
  empty borders; the spatial transform then cuts the network patch from its centre.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import BrightnessMultiplicativeTransform, ContrastAugmentationTransform, GammaTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from kneeseg.errors import KneesegError
from kneeseg.training.ranges import ROTATION_DEG, SCALE
from kneeseg.training.soft_targets import FRACTIONS_KEY, AppendFractionsToData, SplitFractionsFromData, one_hot_fractions
from kneeseg.training.structure_removal import RemoveStructureTransform
from kneeseg.training.thick_slices import ThickSliceTransform


class CaseStore:
    """Memory-mapped access to the preprocessed cases of one cache folder."""

    def __init__(self, cache_dir: Path, case_ids: list[str]):
        self.cache_dir = cache_dir
        self.case_ids = list(case_ids)
        self.locations = {}
        for cid in self.case_ids:
            props = json.loads((cache_dir / f"{cid}.json").read_text())
            self.locations[cid] = {int(k): np.asarray(v, dtype=int).reshape(-1, 3) for k, v in props["class_locations"].items()}

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._open(self.cache_dir / f"{case_id}.npy"), self._open(self.cache_dir / f"{case_id}_seg.npy")

    def fractions(self, case_id: str) -> np.ndarray | None:
        """Each foreground class's share of a voxel (K, Z, Y, X), None where the labels were not resampled."""
        path = self.cache_dir / f"{case_id}_fractions.npy"
        return self._open(path) if path.exists() else None

    @staticmethod
    def _open(path: Path) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise KneesegError(f"{path}: cannot read preprocessed case ({exc})") from None


def loader_patch_size(patch: list[int], rotation: bool = True, min_scale: float = SCALE[0]) -> list[int]:
    """Patch to cut so that rotating by up to ROTATION_DEG and zooming out to ``min_scale`` stays inside."""
    grow = (np.cos(np.deg2rad(ROTATION_DEG)) + np.sin(np.deg2rad(ROTATION_DEG))) if rotation else 1.0
    return [int(np.ceil(p * grow / min_scale)) for p in patch]


def crop_padded(array: np.ndarray, start: np.ndarray, size: list[int], fill=0) -> np.ndarray:
    """array[..., start:start+size] with out-of-bounds parts filled (array has leading channel axes)."""
    spatial = np.asarray(array.shape[-3:])
    lo, hi = np.maximum(start, 0), np.minimum(start + np.asarray(size), spatial)
    out = np.full((*array.shape[:-3], *size), fill, dtype=array.dtype)
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


class PatchLoader(SlimDataLoaderBase):
    """Endless batches {'data': (B, C, *size), 'seg': (B, 1, *size)} from a CaseStore, and with
    ``soft_labels`` (the foreground label values) 'fractions': (B, K, *size), each label's share.

    Randomness comes from numpy's global generator, which batchgenerators seeds in each worker.
    """

    def __init__(self, store: CaseStore, batch_size: int, size: list[int], oversample: float = 0.33,
                 soft_labels: list[int] | None = None):
        super().__init__(None, batch_size, 1)
        self.store, self.size, self.oversample = store, list(size), oversample
        self.soft_labels = soft_labels

    def _start(self, case_id: str, shape: np.ndarray, force_fg: bool) -> np.ndarray:
        size = np.asarray(self.size)
        locations = self.store.locations[case_id]
        classes = [c for c, locs in locations.items() if len(locs)]
        if force_fg and classes:
            locs = locations[classes[np.random.randint(len(classes))]]
            centre = locs[np.random.randint(len(locs))]
            return centre - size // 2
        # Uniform: any start that keeps at least half the patch inside the image.
        low = -(size // 2)
        high = np.maximum(low + 1, shape - size + size // 2 + 1)
        return np.array([np.random.randint(a, b) for a, b in zip(low, high)])

    def generate_train_batch(self) -> dict:
        n_fg = int(round(self.batch_size * self.oversample))
        data, seg, fractions = [], [], []
        for i in range(self.batch_size):
            case_id = self.store.case_ids[np.random.randint(len(self.store.case_ids))]
            image, labels = self.store.load(case_id)
            # nnU-Net's rule (the last round(B * p) patches) rounds to none for a batch of one, e.g. a batch
            # of 2 split over two DDP ranks, which then never sees a foreground-centred patch.
            force = i >= self.batch_size - n_fg if n_fg else bool(np.random.uniform() < self.oversample)
            start = self._start(case_id, np.asarray(labels.shape), force_fg=force)
            data.append(crop_padded(image, start, self.size))
            seg.append(crop_padded(labels[None], start, self.size))
            if self.soft_labels is not None:
                shares = self.store.fractions(case_id)
                fractions.append(one_hot_fractions(seg[-1][0], self.soft_labels) if shares is None
                                 else crop_padded(shares, start, self.size).astype(np.float32))
        batch = {"data": np.stack(data).astype(np.float32), "seg": np.stack(seg).astype(np.float32)}
        if fractions:
            batch[FRACTIONS_KEY] = np.stack(fractions)
        return batch


def training_transforms(patch: list[int], mirror_axes: list[int], elastic: bool = False, intensity: bool = True,
                        soft_targets: bool = False, remove_structures: float = 0.0) -> Compose:
    """nnU-Net's augmentation recipe, with rotations limited to +-15 degrees (knees come roughly
    aligned), mirroring only along the axes the plans allow (anatomical labels are sided), and thick
    slices along one random axis (low-field 2D protocols). ``intensity=False`` keeps only the spatial
    transforms and mirroring (an ablation: scans from the training scanner only). ``soft_targets``:
    the batch's label shares get the same spatial transform and mirroring as the image.
    ``remove_structures``: the share of patches in which one labelled structure is replaced by the
    tissue around it (kneeseg/training/structure_removal.py), after the spatial transform."""
    a = np.deg2rad(ROTATION_DEG)
    transforms = [
        # Elastic: nnU-Net v1's 3D range; the displacement field then has a std of ~1.7 voxels (at most
        # ~5), where alpha up to 200 moved voxels by ~0.4 and changed no shape a network would notice.
        SpatialTransform(
            patch, patch_center_dist_from_border=None, do_elastic_deform=elastic, alpha=(0.0, 900.0), sigma=(9.0, 13.0),
            do_rotation=True, angle_x=(-a, a), angle_y=(-a, a), angle_z=(-a, a), do_scale=True, scale=SCALE,
            border_mode_data="constant", border_cval_data=0, order_data=3, border_mode_seg="constant", border_cval_seg=0,
            order_seg=0, random_crop=False, p_el_per_sample=0.2, p_scale_per_sample=0.2, p_rot_per_sample=0.2,
        ),
    ]
    intensity_transforms = [
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5, order_downsample=0,
                                       order_upsample=3, p_per_sample=0.25),
        # Anisotropic scans (e.g. 0.7 x 0.7 x 2 mm) arrive smooth along their slice axis after resampling.
        ThickSliceTransform(factor_range=(1.5, 3.0), p_per_sample=0.15),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    mirror = [MirrorTransform(tuple(mirror_axes))] if mirror_axes else []
    removal = [RemoveStructureTransform(remove_structures, fractions_key=FRACTIONS_KEY if soft_targets else None)
               ] if remove_structures > 0 else []
    if soft_targets:  # the shares leave the image channels before any intensity transform
        return Compose([AppendFractionsToData(), *transforms, *mirror, SplitFractionsFromData(), *removal,
                        *(intensity_transforms if intensity else [])])
    return Compose([*transforms, *removal, *(intensity_transforms if intensity else []), *mirror])


def center_crop_transform(patch: list[int], soft_targets: bool = False) -> Compose:
    """Validation: no augmentation, just the network patch from the centre of the loader patch."""
    crop = SpatialTransform(patch, patch_center_dist_from_border=None, do_elastic_deform=False,
                            do_rotation=False, do_scale=False, random_crop=False)
    return Compose([AppendFractionsToData(), crop, SplitFractionsFromData()] if soft_targets else [crop])


def make_augmenter(loader: PatchLoader, transforms: Compose, num_workers: int, seed: int):
    """Background processes (num_workers > 0) or in-process augmentation, both seeded."""
    if num_workers <= 0:
        np.random.seed(seed)
        return SingleThreadedAugmenter(loader, transforms)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(num_workers)]
    return MultiThreadedAugmenter(loader, transforms, num_workers, num_cached_per_queue=3, seeds=seeds, timeout=60)
