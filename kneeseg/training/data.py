"""Patches from the preprocessed cache, augmented with batchgenerators in background processes.

- A third of each batch (the last round(B / 3) samples; for a batch of one, each sample with
  probability 1/3) is centred on a random voxel of a random foreground class present in the case
  (foreground oversampling); the rest is placed uniformly.
- The loader cuts a patch larger than the network's, so that rotation and scaling never pull in
  empty borders; the spatial transform then cuts the network patch from its centre.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from batchgenerators.transforms.color_transforms import BrightnessMultiplicativeTransform, ContrastAugmentationTransform, GammaTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from kneeseg.errors import KneesegError
from kneeseg.training.ranges import ROTATION_DEG, SCALE
from kneeseg.training.thick_slices import ThickSliceTransform


class CaseStore:
    """Memory-mapped access to the preprocessed cases of one cache folder."""

    def __init__(self, cache_dir: Path, case_ids: list[str]):
        self.cache_dir = cache_dir
        self.case_ids = list(case_ids)
        self.locations = {}
        for cid in self.case_ids:
            props = json.loads((cache_dir / f"{cid}.json").read_text(encoding="utf-8"))
            self.locations[cid] = {int(k): np.asarray(v, dtype=int).reshape(-1, 3) for k, v in props["class_locations"].items()}

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._open(self.cache_dir / f"{case_id}.npy"), self._open(self.cache_dir / f"{case_id}_seg.npy")

    def check(self) -> None:
        """A KneesegError naming the first case whose files have gone from the cache."""
        for case_id in self.case_ids:
            for path in (self.cache_dir / f"{case_id}.npy", self.cache_dir / f"{case_id}_seg.npy"):
                if not path.exists():
                    raise KneesegError(f"{path}: preprocessed case disappeared during training; "
                                       "run kneeseg_plan_and_preprocess again")

    @staticmethod
    def _open(path: Path) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            problem = "disappeared during training" if not path.exists() else f"cannot be read ({exc})"
            raise KneesegError(f"{path}: preprocessed case {problem}; run kneeseg_plan_and_preprocess again") from None


FAILED_KEY = "failed"  # a batch that could not be made carries the reason here (the trainer raises it)


def die_with_parent(parent_pid: int) -> None:
    """In a forked augmentation worker (Linux): have the kernel kill this process when its parent
    ends, SIGKILL included, so that no worker outlives a killed training."""
    if os.getpid() == parent_pid or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent ended before the request
        os._exit(1)


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
    out[(Ellipsis,) + dst] = array[(Ellipsis,) + src]
    return out


class PatchLoader(SlimDataLoaderBase):
    """Endless batches {'data': (B, C, *size), 'seg': (B, 1, *size)} from a CaseStore.

    Randomness comes from numpy's global generator, which batchgenerators seeds in each worker.
    """

    def __init__(self, store: CaseStore, batch_size: int, size: list[int], oversample: float = 0.33):
        super().__init__(None, batch_size, 1)
        self.store, self.size, self.oversample = store, list(size), oversample
        self.parent_pid, self.in_worker = os.getpid(), False

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
        if not self.in_worker:  # first batch in this process: a worker (forked) must not outlive the trainer
            die_with_parent(self.parent_pid)
            self.in_worker = True
        try:
            return self._batch()
        except KneesegError as exc:  # the trainer raises it as one line; no worker traceback
            shape = (self.batch_size, 1, *self.size)
            return {"data": np.zeros(shape, np.float32), "seg": np.zeros(shape, np.float32), FAILED_KEY: str(exc)}

    def _batch(self) -> dict:
        n_fg = int(round(self.batch_size * self.oversample))
        data, seg = [], []
        for i in range(self.batch_size):
            case_id = self.store.case_ids[np.random.randint(len(self.store.case_ids))]
            image, labels = self.store.load(case_id)
            # nnU-Net's rule (the last round(B * p) patches) rounds to none for a batch of one, e.g. a batch
            # of 2 split over two DDP ranks, which then never sees a foreground-centred patch.
            force = i >= self.batch_size - n_fg if n_fg else bool(np.random.uniform() < self.oversample)
            start = self._start(case_id, np.asarray(labels.shape), force_fg=force)
            data.append(crop_padded(image, start, self.size))
            seg.append(crop_padded(labels[None], start, self.size))
        return {"data": np.stack(data).astype(np.float32), "seg": np.stack(seg).astype(np.float32)}


def spatial_transform(patch: list[int], **overrides) -> SpatialTransform:
    """nnU-Net's rotation and scaling, with rotations limited to +-15 degrees (knees come roughly
    aligned); cuts the network ``patch`` from the centre of the loader's larger patch. ``overrides``
    are further SpatialTransform arguments (a trainer variant's elastic deformation, for example)."""
    a = np.deg2rad(ROTATION_DEG)
    arguments = dict(
        patch_center_dist_from_border=None, do_elastic_deform=False, do_rotation=True, angle_x=(-a, a), angle_y=(-a, a),
        angle_z=(-a, a), do_scale=True, scale=SCALE, border_mode_data="constant", border_cval_data=0, order_data=3,
        border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False, p_scale_per_sample=0.2,
        p_rot_per_sample=0.2,
    )
    return SpatialTransform(patch, **{**arguments, **overrides})


# Wider than nnU-Net's gamma 0.7-1.5 and the earlier slices of 1.5-3 times the spacing: with those, the
# 60-minute half-A model lost half B under gamma 0.5 (0.902) and 3 mm axial slices (0.940); with these it
# held both (0.969, 0.966) within 0.01 of its recorded figure (benchmarks/RESULTS.md, "Wider gamma and
# thicker slices").
GAMMA_RANGE = (0.5, 2.0)
THICK_SLICE_FACTORS = (1.5, 5.0)  # of the plan's spacing: up to ~3.4 mm slices at 0.685 mm


def intensity_transforms(gamma_range: tuple[float, float] = GAMMA_RANGE,
                         thick_slice_factors: tuple[float, float] = THICK_SLICE_FACTORS) -> list[AbstractTransform]:
    """nnU-Net's intensity recipe (noise, blur, brightness, contrast, low resolution, gamma) and thick
    slices along one random axis (low-field 2D protocols); ``gamma_range``: the gammas of both gamma
    transforms (a draw is below 1 or above it with even odds, batchgenerators' rule);
    ``thick_slice_factors``: slice thickness as multiples of the plan's spacing."""
    return [
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5, order_downsample=0,
                                       order_upsample=3, p_per_sample=0.25),
        # Anisotropic scans (e.g. 0.7 x 0.7 x 2 mm) arrive smooth along their slice axis after resampling.
        ThickSliceTransform(factor_range=thick_slice_factors, p_per_sample=0.15),
        GammaTransform(gamma_range, invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform(gamma_range, invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]


def mirror_transforms(mirror_axes: list[int]) -> list[AbstractTransform]:
    """Mirroring only along the axes the plans allow (anatomical labels are sided)."""
    return [MirrorTransform(tuple(mirror_axes))] if mirror_axes else []


def center_crop_transform(patch: list[int]) -> SpatialTransform:
    """Validation: no augmentation, just the network patch from the centre of the loader patch."""
    return SpatialTransform(patch, patch_center_dist_from_border=None, do_elastic_deform=False,
                            do_rotation=False, do_scale=False, random_crop=False)


def make_augmenter(loader: PatchLoader, transforms: AbstractTransform, num_workers: int, seed: int):
    """Background processes (num_workers > 0) or in-process augmentation, both seeded."""
    if num_workers <= 0:
        np.random.seed(seed)
        return SingleThreadedAugmenter(loader, transforms)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(num_workers)]
    return MultiThreadedAugmenter(loader, transforms, num_workers, num_cached_per_queue=3, seeds=seeds, timeout=60)
