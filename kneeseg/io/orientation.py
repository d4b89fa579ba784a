"""Canonical orientation: array axes (z, y, x) running along patient S, P, L (LPS, DICOM's axes).

Scans arrive axial, sagittal or coronal, and stored with any axis order and sign. Bringing every
array to one orientation before fingerprinting, training and prediction means a network trained on
axial knees sees a sagittal knee the same way (femur up, patella in front); predictions are mapped
back to the input's own array layout, so the output keeps the input's geometry exactly.
Only axis permutations and flips are used (no interpolation): oblique scans stay as oblique as they were.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Orientation:
    """How to turn an input (z, y, x) array into the canonical one: transpose by ``perm``, then flip ``flips``."""

    perm: tuple[int, ...]
    flips: tuple[bool, ...]

    @classmethod
    def of(cls, direction) -> Orientation:
        d = np.asarray(direction, float).reshape(3, 3)  # d[physical axis, index axis (x, y, z)]
        # Each index axis gets its closest physical axis: the one-to-one pairing with the largest total
        # |cosine| (3! candidates; a first-found maximum breaks the ties of 45-degree obliques).
        physical_of_index = np.array(max(itertools.permutations(range(3)),
                                         key=lambda phys: sum(abs(d[p, i]) for i, p in enumerate(phys))))
        perm, flips = [0, 0, 0], [False, False, False]
        for a in range(3):  # canonical array axis a runs along physical axis 2 - a (z, y, x)
            j = int(np.flatnonzero(physical_of_index == 2 - a)[0])  # index axis holding it
            perm[a] = 2 - j  # array axis of that index axis
            flips[a] = bool(d[2 - a, j] < 0)
        return cls(tuple(perm), tuple(flips))

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """(…, z, y, x) input layout -> canonical layout (leading axes untouched)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        flip_axes = tuple(lead + a for a in range(3) if self.flips[a])
        return np.ascontiguousarray(np.flip(out, flip_axes) if flip_axes else out)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical layout -> the input's layout (the inverse of :meth:`to_canonical`)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        flip_axes = tuple(lead + a for a in range(3) if self.flips[a])
        out = np.flip(array, flip_axes) if flip_axes else array
        inverse = np.argsort(self.perm)
        return np.ascontiguousarray(np.transpose(out, tuple(range(lead)) + tuple(lead + int(p) for p in inverse)))

    def spacing(self, spacing_zyx) -> list[float]:
        return [float(spacing_zyx[p]) for p in self.perm]

    def shape(self, shape_zyx) -> list[int]:
        return [int(shape_zyx[p]) for p in self.perm]

    def to_dict(self) -> dict:
        return {"perm": list(self.perm), "flips": list(self.flips)}

    @classmethod
    def from_dict(cls, d: dict) -> Orientation:
        return cls(tuple(int(v) for v in d["perm"]), tuple(bool(v) for v in d["flips"]))
