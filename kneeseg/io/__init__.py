"""Image and file I/O with geometry; imported by every stage, imports no other stage."""

from kneeseg.io.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_folder,
    read_json,
    refuse_overwriting_inputs,
    refuse_special_file,
)
from kneeseg.io.image import (
    OUTPUT_ENDINGS,
    SUPPORTED_ENDINGS,
    Geometry,
    file_ending,
    read_image,
    strip_ending,
    write_image,
)

__all__ = [
    "OUTPUT_ENDINGS",
    "SUPPORTED_ENDINGS",
    "Geometry",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_writable_folder",
    "file_ending",
    "read_image",
    "read_json",
    "refuse_overwriting_inputs",
    "refuse_special_file",
    "strip_ending",
    "write_image",
]
