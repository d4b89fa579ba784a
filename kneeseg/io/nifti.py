"""Non-finite voxels in NIfTI files, read from the raw bytes.

ITK's NIfTI reader (and so SimpleITK up to ITK 5) silently replaces NaN and +-Inf with 0 (fixed in
ITK 6, InsightSoftwareConsortium/ITK#6683), so a check on the array it returns can never find them.
This reads the float voxel block itself, in chunks, without another dependency.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes for float32 / float64
_CHUNK = 1 << 24


def nifti_nonfinite_count(path: str | Path) -> int:
    """Number of NaN/Inf voxels in a float NIfTI-1 file (0 for integer types and other formats)."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return 0
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
        if len(header) < 348:
            return 0
        endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        if struct.unpack(endian + "i", header[:4])[0] != 348:
            return 0  # NIfTI-2 or not NIfTI: nothing to say
        datatype = struct.unpack(endian + "h", header[70:72])[0]
        if datatype not in _FLOAT_TYPES:
            return 0
        dims = struct.unpack(endian + "8h", header[40:56])
        count = int(np.prod([max(1, d) for d in dims[1 : 1 + max(1, dims[0])]]))
        vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
        f.read(max(0, vox_offset - 348))
        dtype = np.dtype(endian + _FLOAT_TYPES[datatype])
        bad, left = 0, count
        while left > 0:
            block = f.read(min(left, _CHUNK) * dtype.itemsize)
            if not block:
                break
            values = np.frombuffer(block[: len(block) // dtype.itemsize * dtype.itemsize], dtype)
            bad += int((~np.isfinite(values)).sum())
            left -= values.size
    return bad


def has_nonfinite(array: np.ndarray, path: str | Path) -> bool:
    """True if a float image read from ``path`` holds NaN/Inf, in memory or (NIfTI) on disk."""
    if not np.issubdtype(array.dtype, np.floating):
        return False
    return not np.all(np.isfinite(array)) or nifti_nonfinite_count(path) > 0
