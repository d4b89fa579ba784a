"""Dataset fingerprint: the facts the planner decides from.

Spacings and shapes are stored in canonical array order (z, y, x along patient S, P, L; see
kneeseg/io/orientation.py), like every spacing in kneeseg's plans.
The body's extent (``body_shape``: the bounding box of what is not air, kneeseg/fingerprint/air.py)
is recorded beside nnU-Net's crop to the nonzero region, which only removes air a scanner stored as
zeros: the planner sizes patches from the body, so a scan gets the same plans whichever way its
scanner stored the air. Foreground intensity statistics pool up to ``VOXELS_PER_CASE`` labelled
voxels per case, drawn with a seeded generator so that the fingerprint (and hence the plans) are
reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from multiprocessing import get_context

import numpy as np
import torch

from kneeseg.dataset.layout import DatasetJson, RawCase
from kneeseg.fingerprint.air import air_mask
from kneeseg.io import read_image
from kneeseg.io.orientation import Orientation

VOXELS_PER_CASE = 100_000


def nonzero_mask(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Bool (z, y, x) tensor: voxels nonzero in any channel (a list of 3D arrays or one (C, z, y, x))."""
    stack = list(images) if isinstance(images, list) else [images] if images.ndim == 3 else list(images)
    nonzero = torch.from_numpy(np.asarray(stack[0]) != 0)  # numpy compares any dtype (torch lacks uint32 ops)
    for image in stack[1:]:
        nonzero.logical_or_(torch.from_numpy(np.asarray(image) != 0))
    return nonzero


def mask_bbox(mask: torch.Tensor) -> list[list[int]]:
    """Bounding box [[z0, z1], [y0, y1], [x0, x1]] (half-open) of a bool tensor's true voxels; the full
    extent when there are none, so cropping never produces an empty array."""
    box = []
    for axis in range(3):  # torch reductions: multi-threaded, ~4x faster than numpy's on a 512x512x286 scan
        other = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(mask.any(dim=other)).flatten()
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.numel() else [0, mask.shape[axis]])
    return box


@dataclass
class IntensityStats:
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStats:
        if values.size == 0:
            return cls(*(0.0,) * 7)
        v = values.astype(np.float64)
        p = np.percentile(v, [0.5, 50, 99.5])
        return cls(float(v.mean()), float(v.std()), float(p[1]), float(v.min()), float(v.max()), float(p[0]), float(p[2]))


@dataclass
class CaseFingerprint:
    case_id: str
    spacing: list[float]  # z, y, x mm
    shape: list[int]  # z, y, x voxels
    shape_after_crop: list[int]  # the nonzero region's bounding box (what preprocessing crops to)
    body_shape: list[int]  # the bounding box of the voxels that are not air (what the planner sizes from)
    direction: list[float]  # the input's, SimpleITK row-major 3x3
    class_volumes_mm3: dict[str, float]


@dataclass
class Fingerprint:
    dataset_name: str
    cases: list[CaseFingerprint]
    foreground_intensity: dict[str, IntensityStats]  # per channel index
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=float)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        return np.array([c.shape_after_crop for c in self.cases], dtype=float)

    @property
    def body_shapes(self) -> np.ndarray:
        """Each case's body extent (z, y, x voxels)."""
        return np.array([c.body_shape for c in self.cases], dtype=float)

    @property
    def median_relative_size_after_crop(self) -> float:
        return float(np.median([np.prod(c.shape_after_crop) / np.prod(c.shape) for c in self.cases]))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        return cls(
            dataset_name=d["dataset_name"],
            cases=[CaseFingerprint(**c) for c in d["cases"]],
            foreground_intensity={k: IntensityStats(**v) for k, v in d["foreground_intensity"].items()},
            seed=int(d.get("seed", 0)),
            notes=list(d.get("notes", [])),
        )


def _case_fingerprint(job):
    case, ds, seed = job
    labels, geometry = read_image(case.label)
    orientation = Orientation.of(geometry.direction)  # facts are recorded in canonical (S, P, L) axes
    images = [orientation.to_canonical(read_image(p, np.float32)[0]) for p in case.images]
    labels = orientation.to_canonical(labels)
    box = mask_bbox(nonzero_mask(images))
    body = ~np.logical_and.reduce([air_mask(image) for image in images])  # air: dark in every channel
    voxel_mm3 = float(np.prod(geometry.spacing))
    volumes = {ds.label_name(v): float((labels == v).sum() * voxel_mm3) for v in ds.foreground_labels}
    rng = np.random.default_rng(np.random.SeedSequence([seed, sum(map(ord, case.case_id))]))
    foreground = labels > 0
    samples = []
    for image in images:
        values = image[foreground]
        if values.size > VOXELS_PER_CASE:
            values = rng.choice(values, VOXELS_PER_CASE, replace=False)
        samples.append(values)
    fp = CaseFingerprint(
        case_id=case.case_id,
        spacing=orientation.spacing(geometry.spacing_zyx),
        shape=orientation.shape(geometry.shape_zyx),
        shape_after_crop=[hi - lo for lo, hi in box],
        direction=list(geometry.direction),
        class_volumes_mm3=volumes,
        body_shape=[hi - lo for lo, hi in mask_bbox(torch.from_numpy(body))],
    )
    return fp, samples


def extract_fingerprint(
    dataset_name: str, cases: list[RawCase], ds: DatasetJson, num_processes: int = 1, seed: int = 0, progress: bool = True
) -> Fingerprint:
    """Fingerprint the (already verified) training cases of a dataset."""
    from tqdm import tqdm

    jobs = [(c, ds, seed) for c in cases]
    if num_processes > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = list(tqdm(pool.imap(_case_fingerprint, jobs), total=len(jobs), desc="fingerprint", disable=not progress))
    else:
        results = [_case_fingerprint(j) for j in tqdm(jobs, desc="fingerprint", disable=not progress)]
    per_channel = {
        str(c): IntensityStats.of(np.concatenate([samples[c] for _, samples in results]))
        for c in range(ds.num_channels)
    }
    return Fingerprint(dataset_name=dataset_name, cases=[fp for fp, _ in results], foreground_intensity=per_channel, seed=seed)
