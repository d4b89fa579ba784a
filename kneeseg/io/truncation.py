"""Image files whose voxel data is shorter than their header says, found from the raw bytes.

ITK's NIfTI reader reads such a file without a word and fills the missing voxels with zeros; its
MetaImage reader fails with a misleading reason ("No such file or directory") and prints to the
console, its NRRD reader with a long one; GDCM reads a DICOM slice whose pixel data element is
shorter than its rows and columns as zeros (or leaves a slice cut short out of its series without a
word). This measures the data against the header for NIfTI-1/2 (.nii, .nii.gz), NRRD with attached
raw or gzip data, MetaImage (.mha, .mhd with one data file) and DICOM with uncompressed pixel data,
so that every command refuses a cut-short file in the same words. Anything it cannot parse is left
to ITK's reader.
"""

from __future__ import annotations

import gzip
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 16  # compressed bytes per step: deflate expands at most ~1000x, so <= 64 MiB at once
_MAX = 1 << 62


@dataclass(frozen=True)
class Shortfall:
    """The voxel data of ``data_file`` holds ``found`` of the ``expected`` bytes its header describes."""

    expected: int
    found: int
    data_file: Path
    uncompressed: bool  # the sizes are of the decompressed data

    def describe(self, path: Path) -> str:
        where = "the file holds" if self.data_file == path else f"its data file {self.data_file.name} holds"
        unpacked = " (uncompressed)" if self.uncompressed else ""
        return (f"file is truncated: its header describes {self.expected} bytes, {where} {self.found}{unpacked}, "
                f"{100 * self.found // max(1, self.expected)}%")


def _inflated_size(f) -> int:
    """Bytes a zlib or gzip stream (possibly several gzip members) decompresses to, up to where it ends or breaks."""
    total, pending = 0, b""
    d = zlib.decompressobj(47)  # 32 + 15: zlib or gzip header, detected
    while True:
        if not pending:
            pending = f.read(_CHUNK)
            if not pending:
                return total
        if d.eof:
            if not pending.startswith(b"\x1f\x8b"):
                return total  # padding after the stream
            d = zlib.decompressobj(47)
        try:
            total += len(d.decompress(pending))
        except zlib.error:
            return total
        pending = d.unused_data if d.eof else b""


def _gzip_trailer_matches(path: Path, size: int) -> bool:
    """A complete gzip stream ends with its uncompressed size (mod 2**32); a file cut short ends in
    arbitrary bytes. The quick check that spares decompressing every good file a second time."""
    with open(path, "rb") as f:
        if f.seek(0, 2) < 4:
            return False
        f.seek(-4, 2)
        return struct.unpack("<I", f.read(4))[0] == size % (1 << 32)


# NIfTI datatype code -> bytes per voxel (the sizes niftilib, and so ITK, reads by)
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}


def _nifti(path: Path) -> Shortfall | None:
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            header = f.read(540)
    except (EOFError, OSError, zlib.error):
        return None  # not gzip at all, or broken within the header: ITK says so
    expected = None
    # NIfTI-1 (348-byte header) and NIfTI-2 (540): offsets of dim[8], datatype and vox_offset.
    for size, dims_at, dim_fmt, type_at, offset_at, offset_fmt in ((348, 40, "8h", 70, 108, "f"),
                                                                 (540, 16, "8q", 12, 168, "q")):
        for endian in "<>":
            if len(header) < size or struct.unpack(endian + "i", header[:4])[0] != size:
                continue
            dims = struct.unpack_from(endian + dim_fmt, header, dims_at)
            voxel = _NIFTI_BYTES.get(struct.unpack_from(endian + "h", header, type_at)[0])  # as niftilib: not bitpix
            offset = struct.unpack_from(endian + offset_fmt, header, offset_at)[0]
            if not 1 <= dims[0] <= 7 or voxel is None or not 0 <= offset < _MAX:
                return None
            count = 1
            for d in dims[1:1 + dims[0]]:
                count *= max(1, int(d))
            expected = max(int(offset), size) + count * voxel
    if expected is None or expected >= _MAX:
        return None
    if not gz:
        found = path.stat().st_size
    elif _gzip_trailer_matches(path, expected):
        return None
    else:
        with open(path, "rb") as f:
            found = _inflated_size(f)
    return Shortfall(expected, found, path, gz) if found < expected else None


_NRRD_TYPES = {
    1: "signed char|int8|int8_t|uchar|unsigned char|uint8|uint8_t",
    2: "short|short int|signed short|signed short int|int16|int16_t|ushort|unsigned short|unsigned short int|uint16|uint16_t",
    4: "int|signed int|int32|int32_t|uint|unsigned int|uint32|uint32_t|float",
    8: "longlong|long long|long long int|signed long long|signed long long int|int64|int64_t|ulonglong|"
       "unsigned long long|unsigned long long int|uint64|uint64_t|double",
}
_NRRD_SIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names.split("|")}


def _nrrd(path: Path) -> Shortfall | None:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.startswith(b"NRRD"):
        return None
    end = re.search(rb"\r?\n\r?\n", head)
    if end is None:
        return None
    fields = {}
    for line in head[:end.start()].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
    if {"data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip"} & fields.keys():
        return None  # detached or skipped data: left to ITK
    try:
        count = 1
        for s in fields["sizes"].split():
            count *= int(s)
        expected = count * _NRRD_SIZE[fields["type"].lower()]
    except (KeyError, ValueError):
        return None
    encoding = fields.get("encoding", "").lower()
    if encoding == "raw":
        found = path.stat().st_size - end.end()
    elif encoding in ("gzip", "gz"):
        if _gzip_trailer_matches(path, expected):
            return None
        with open(path, "rb") as f:
            f.seek(end.end())
            found = _inflated_size(f)
    else:
        return None
    return Shortfall(expected, found, path, encoding != "raw") if found < expected else None


_MET_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _metaimage(path: Path) -> Shortfall | None:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    match = re.search(rb"^ElementDataFile\s*=\s*([^\r\n]*)\r?\n?", head, re.M)
    if match is None:
        return None
    fields = {}
    for line in head[:match.start()].decode("latin-1").splitlines():
        key, eq, value = line.partition("=")
        if eq:
            fields[key.strip()] = value.strip()
    name = match.group(1).decode("latin-1").strip()
    try:
        count = 1
        for s in fields["DimSize"].split():
            count *= int(s)
        expected = count * _MET_SIZE[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", "1"))
        skip = int(fields.get("HeaderSize", "0"))
    except (KeyError, ValueError):
        return None
    if name.upper() == "LOCAL":
        data_file, start = path, match.end()
    elif name and " " not in name and "%" not in name and name.upper() != "LIST":
        data_file, start = path.parent / name, 0
        if not data_file.is_file():
            return None  # ITK names the missing file
    else:
        return None
    if skip:
        return None  # data after a skipped block (or at the file's end, -1): left to ITK
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if not compressed:
        found = data_file.stat().st_size - start
    elif "CompressedDataSize" in fields:
        try:  # the compressed stream's own length is in the header: no need to decompress
            expected = int(fields["CompressedDataSize"])
        except ValueError:
            return None
        found = data_file.stat().st_size - start
    else:
        with open(data_file, "rb") as f:
            f.seek(start)
            found = _inflated_size(f)
        return Shortfall(expected, found, data_file, True) if found < expected else None
    return Shortfall(expected, found, data_file, False) if found < expected else None


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM file does (a 128-byte preamble, then 'DICM')."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_shortfall(path: str | Path, force: bool = False) -> Shortfall | None:
    """How much of a DICOM file's uncompressed pixel data is missing (Rows x Columns x SamplesPerPixel x
    NumberOfFrames x BitsAllocated), from the pixel data element's length and from the file's own length
    (a file cut short); None for complete, compressed or unparsable files. ``force``: also a file
    without the DICOM preamble (one that GDCM already took for DICOM)."""
    import pydicom

    path = Path(path)
    try:
        with warnings.catch_warnings():  # judged here: pydicom's remarks on odd values are not the user's concern
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024, force=force)  # the pixel data is not read, only its length
            syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
            if syntax is not None and (syntax.is_encapsulated or syntax.is_deflated):
                return None  # encapsulated or deflated: no length to compare with
            rows, columns, bits = (int(ds.get(k) or 0) for k in ("Rows", "Columns", "BitsAllocated"))
            samples, frames = int(ds.get("SamplesPerPixel") or 1), int(ds.get("NumberOfFrames") or 1)
            element = ds.get_item("PixelData") if "PixelData" in ds else None
    except Exception:  # noqa: BLE001 (not DICOM, or broken in a way pydicom names: ITK's reader says what it says)
        return None
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if not expected or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return None
    length, start = getattr(element, "length", None), getattr(element, "value_tell", None)  # of a deferred value
    if element is None:
        found = 0  # cut before its pixel data
    elif element.value is not None:
        found = len(element.value)
    elif length is None or start is None or length == 0xFFFFFFFF:
        return None  # undefined length: encapsulated frames
    else:
        found = min(int(length), path.stat().st_size - int(start))
    return Shortfall(expected, found, path, False) if found < expected else None


def data_shortfall(path: str | Path) -> Shortfall | None:
    """How much voxel data a file lacks against its header, or None (complete, or not a format checked here)."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _nifti(path)
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd(path)
        if name.endswith((".mha", ".mhd")):
            return _metaimage(path)
        if name.endswith(".dcm") or is_dicom_file(path):
            return dicom_shortfall(path, force=name.endswith(".dcm"))
    except OSError:
        return None  # unreadable: ITK's reader says why
    return None
