"""Turning a binary bone mask into femur / tibia / patella by 3D connected components and anatomy.

Anatomy, not size rank: in patient (LPS) coordinates the patella is the most anterior (lowest y)
of the three bones, and of the other two the femur is the more superior (higher z). Components
smaller than ``min_fraction`` of the bone volume are strays: they are reported and left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from kneeseg.dataset.layout import KNEE_LABELS
from kneeseg.errors import KneesegError
from kneeseg.io import Geometry


@dataclass
class Component:
    voxels: int
    volume_mm3: float
    centroid_mm: tuple[float, ...]  # physical x, y, z (LPS)
    label: str = "stray"

    def describe(self) -> str:
        c = ", ".join(f"{v:.1f}" for v in self.centroid_mm)
        return f"{self.label}: {self.voxels} voxels ({self.volume_mm3:.0f} mm3) at ({c}) mm"


@dataclass
class BoneSplit:
    labels: np.ndarray  # uint8 (z, y, x): 0 background, 1 femur, 2 tibia, 3 patella
    bones: list[Component]
    strays: list[Component] = field(default_factory=list)

    def report(self) -> list[str]:
        lines = [c.describe() for c in self.bones]
        lines += [f"stray component left out: {c.describe()}" for c in self.strays]
        return lines


def split_bones(mask: np.ndarray, geometry: Geometry, source: str = "mask", min_fraction: float = 0.02) -> BoneSplit:
    """Label the three knee bones of a binary ``mask`` (z, y, x) by connected components and anatomy.

    Raises KneesegError naming ``source`` when the mask does not decompose into three bones.
    """
    binary = mask > 0
    components, n = ndimage.label(binary)  # face connectivity: touching bones stay separate
    if n == 0:
        raise KneesegError(f"{source}: mask is empty")
    counts, centres = _sizes_and_centres(components, n)
    physical = geometry.index_to_physical(centres[:, ::-1])
    voxel_mm3 = float(np.prod(geometry.spacing))
    parts = [Component(int(c), c * voxel_mm3, tuple(float(v) for v in p)) for c, p in zip(counts, physical)]
    big = [i for i in range(n) if counts[i] >= min_fraction * counts.sum()]
    if len(big) != 3:
        sizes = ", ".join(str(int(c)) for c in sorted(counts[big], reverse=True))
        raise KneesegError(
            f"{source}: found {len(big)} large connected component(s) ({sizes} voxels) and {n - len(big)} small; "
            "expected 3 bones (femur, tibia, patella); use --binary to import it as one 'bone' label"
        )
    patella = min(big, key=lambda i: physical[i][1])  # most anterior: smallest LPS y
    femur, tibia = sorted((i for i in big if i != patella), key=lambda i: -physical[i][2])  # superior first
    lut = np.zeros(n + 1, np.uint8)
    for name, i in (("femur", femur), ("tibia", tibia), ("patella", patella)):
        lut[i + 1] = KNEE_LABELS[name]
        parts[i].label = name
    strays = [parts[i] for i in range(n) if i not in big]
    return BoneSplit(labels=lut[components], bones=[parts[femur], parts[tibia], parts[patella]], strays=strays)


def _sizes_and_centres(components: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count and centroid (z, y, x, in voxels) of each of the ``n`` components, each measured
    within its own bounding box: scipy's ``sum_labels`` and ``center_of_mass`` pass over the whole
    grid for every statistic (8 s of a 512x512x286 mask, against 0.2 s)."""
    counts, centres = np.zeros(n, np.int64), np.zeros((n, 3))
    for i, box in enumerate(ndimage.find_objects(components)):
        inside = components[box] == i + 1
        counts[i] = np.count_nonzero(inside)
        for axis in range(3):
            profile = np.count_nonzero(inside, axis=tuple(a for a in range(3) if a != axis))
            centres[i, axis] = box[axis].start + np.arange(profile.size) @ profile / counts[i]
    return counts, centres
