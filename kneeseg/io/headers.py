"""Voxel spacings in image headers that ITK would not read as given, found from the raw header.

A NIfTI file whose pixdim is 0 or not a number is read by ITK at 1 mm (its substitute), with raw
warnings on stderr, and the meshes and volumes made from it come out in the wrong size; a NaN in
its sform makes VNL print matrices to stderr. A zero spacing in an NRRD or MetaImage header ends in
a long ITK exception, a negative MetaImage spacing is read as a flipped axis. This reads the
spacing from NIfTI-1/2 (pixdim, and the sform and qform where their codes say they are used),
NRRD (space directions, spacings) and MetaImage (ElementSpacing) headers, so that every command
refuses such a file in one line naming it. Anything it cannot parse is left to ITK's reader.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

_REFUSAL = "fix the header: kneeseg does not guess a voxel size"


def _shown(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _nifti(path: Path) -> str | None:
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            header = f.read(540)
    except (EOFError, OSError, zlib.error):
        return None
    # NIfTI-1 (348 bytes) and NIfTI-2 (540): dim, pixdim, qform_code, sform_code, quatern_b..qoffset_z, srow_x..z
    layouts = ((348, "h", 40, "f", 76, "h", 252, 256, 280), (540, "q", 16, "d", 104, "i", 344, 352, 400))
    for size, dim_type, dims_at, real, pixdim_at, code_type, codes_at, quatern_at, srow_at in layouts:
        for endian in "<>":
            if len(header) < size or struct.unpack(endian + "i", header[:4])[0] != size:
                continue
            dims = struct.unpack_from(f"{endian}8{dim_type}", header, dims_at)
            pixdim = struct.unpack_from(f"{endian}8{real}", header, pixdim_at)
            qform, sform = struct.unpack_from(f"{endian}2{code_type}", header, codes_at)
            if not 1 <= dims[0] <= 7:
                return None
            spatial = pixdim[1:1 + min(3, dims[0])]
            if not all(math.isfinite(v) and v > 0 for v in spatial):
                return f"voxel spacing {_shown(spatial)} mm in the header (pixdim) is not positive; {_REFUSAL}"
            if sform > 0:
                rows = [struct.unpack_from(f"{endian}4{real}", header, srow_at + k * 4 * struct.calcsize(real)) for k in range(3)]
                columns = [[rows[r][c] for r in range(3)] for c in range(3)]
                if not all(math.isfinite(v) for row in rows for v in row):
                    return f"the header's sform (srow_x, srow_y, srow_z) holds a value that is not a number; {_REFUSAL}"
                if any(math.hypot(*column) == 0 for column in columns):
                    return f"the header's sform (srow_x, srow_y, srow_z) gives a voxel axis of length 0; {_REFUSAL}"
            if qform > 0 and not all(math.isfinite(v) for v in struct.unpack_from(f"{endian}6{real}", header, quatern_at)):
                return f"the header's qform (quatern_b..qoffset_z) holds a value that is not a number; {_REFUSAL}"
            return None
    return None


def _header_fields(path: Path, end: bytes, separator: str) -> dict[str, str] | None:
    """The ``key<separator>value`` lines of a text header that ends at the first match of ``end``."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    match = re.search(end, head, re.M)
    if match is None:
        return None
    fields = {}
    for line in head[:match.start()].decode("latin-1").splitlines():
        key, found, value = line.partition(separator)
        if found and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip()
    return fields


def _nrrd(path: Path) -> str | None:
    with open(path, "rb") as f:
        if f.read(4) != b"NRRD":
            return None
    fields = _header_fields(path, rb"\r?\n\r?\n", ":")
    if fields is None:
        return None
    kinds = fields.get("kinds", "").lower().split()
    if "space directions" in fields:
        for vector in re.findall(r"\(([^)]*)\)", fields["space directions"]):
            try:
                values = [float(v) for v in vector.split(",")]
            except ValueError:
                return None  # teem says what is wrong with it
            if not all(math.isfinite(v) for v in values) or math.hypot(*values) == 0:
                return f"a voxel axis in the header (space directions) is ({vector}): not a positive length; {_REFUSAL}"
    if "spacings" in fields:
        for axis, text in enumerate(fields["spacings"].split()):
            kind = kinds[axis] if axis < len(kinds) else "domain"
            try:
                value = float(text)
            except ValueError:
                return None
            if kind in ("domain", "space", "time") and not (math.isfinite(value) and value != 0):
                return f"voxel spacing ({fields['spacings']}) in the header (spacings) is zero or not a number; {_REFUSAL}"
    return None


def _metaimage(path: Path) -> str | None:
    fields = _header_fields(path, rb"^ElementDataFile\s*=", "=")
    if fields is None or "elementspacing" not in fields:
        return None
    try:
        spacing = [float(v) for v in fields["elementspacing"].split()]
    except ValueError:
        return None
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        return f"voxel spacing {_shown(spacing)} mm in the header (ElementSpacing) is not positive; {_REFUSAL}"
    return None


def spacing_problem(path: str | Path) -> str | None:
    """Why the voxel spacing in ``path``'s header cannot be read as given, or None (fine, or not checked here)."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _nifti(path)
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd(path)
        if name.endswith((".mha", ".mhd")):
            return _metaimage(path)
    except (OSError, struct.error):
        return None  # unreadable: ITK's reader says why
    return None
