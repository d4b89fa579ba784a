"""Label names and colours for viewers: ITK-SNAP label descriptions and 3D Slicer colour tables.

Colours: :data:`BONE_COLOURS` gives the three knee bones bone-like, tellable-apart shades (RGB
0-255): femur ivory (241, 214, 145, the "bone" colour of 3D Slicer's GenericAnatomyColors table),
tibia a paler cream (250, 236, 190) and patella a darker tan (205, 160, 95). Other labels take the
colours of :data:`_OTHER_COLOURS` in turn; background is black and transparent.

ITK-SNAP label description file (``Segmentation > Import Label Descriptions``): ``#`` comment
lines, then one line per label, ``IDX R G B A VIS MSH "LABEL"`` (index, colour 0-255, opacity
0-1, label visible 0/1, mesh visible 0/1, quoted description), as ITK-SNAP itself exports.

3D Slicer colour table (``.ctbl``, loaded as a Color Table; Slicer's vtkMRMLColorTableStorageNode):
``#`` comment lines, then one line per label, ``VALUE NAME R G B A`` with colour and opacity 0-255;
names cannot hold spaces (they are replaced by ``_``).
"""

from __future__ import annotations

import os
from pathlib import Path

from kneeseg.io.atomic import atomic_write_text
from kneeseg.io.protect import holds_within

RGB = tuple[int, int, int]
BONE_COLOURS: dict[str, RGB] = {
    "femur": (241, 214, 145),
    "tibia": (250, 236, 190),
    "patella": (205, 160, 95),
}
_OTHER_COLOURS: tuple[RGB, ...] = ((128, 174, 128), (216, 101, 79), (111, 184, 210), (220, 130, 190), (144, 238, 144))
BACKGROUND_COLOUR: RGB = (0, 0, 0)
_WRITTEN_BY = b"written by kneeseg"  # in the first lines of both files: files kneeseg may replace


def label_colours(labels: dict[str, int]) -> dict[str, RGB]:
    """A colour per label name: background black, the bones :data:`BONE_COLOURS`, others in turn."""
    colours: dict[str, RGB] = {}
    others = 0
    for name, value in sorted(labels.items(), key=lambda kv: kv[1]):
        if value == 0:
            colours[name] = BACKGROUND_COLOUR
        elif name.lower() in BONE_COLOURS:
            colours[name] = BONE_COLOURS[name.lower()]
        else:
            colours[name] = _OTHER_COLOURS[others % len(_OTHER_COLOURS)]
            others += 1
    return colours


def itksnap_label_text(labels: dict[str, int]) -> str:
    """The ITK-SNAP label description file for ``labels`` (name -> value, background included)."""
    colours = label_colours(labels)
    lines = ["################################################",
             f"# ITK-SnAP Label Description File ({_WRITTEN_BY.decode()})",
             "# File format:",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "# Fields:",
             "#    IDX:   Zero-based index",
             "#    -R-:   Red color component (0..255)",
             "#    -G-:   Green color component (0..255)",
             "#    -B-:   Blue color component (0..255)",
             "#    -A-:   Label transparency (0.00 .. 1.00)",
             "#    VIS:   Label visibility (0 or 1)",
             "#    MSH:   Label mesh visibility (0 or 1)",
             "#  LABEL:   Label description",
             "################################################"]
    for name, value in sorted(labels.items(), key=lambda kv: kv[1]):
        r, g, b = colours[name]
        visible = 0 if value == 0 else 1
        text = name.replace('"', "'")
        lines.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {visible:8d} {visible:2d} {visible:2d}    \"{text}\"")
    return "\n".join(lines) + "\n"


def slicer_colour_table_text(labels: dict[str, int]) -> str:
    """The 3D Slicer colour table (.ctbl) for ``labels`` (name -> value, background included)."""
    colours = label_colours(labels)
    lines = [f"# Color table file {_WRITTEN_BY.decode()}", f"# {len(labels)} values"]
    for name, value in sorted(labels.items(), key=lambda kv: kv[1]):
        r, g, b = colours[name]
        alpha = 0 if value == 0 else 255
        lines.append(f"{value} {'_'.join(name.split()) or str(value)} {r} {g} {b} {alpha}")
    return "\n".join(lines) + "\n"


ITKSNAP_SUFFIX = ".itksnap.txt"
SLICER_SUFFIX = ".ctbl"


def label_description_paths(output: str | os.PathLike, single_file: bool, stem: str) -> tuple[Path, Path]:
    """Where the label descriptions of an output go: ``labels.itksnap.txt`` and ``labels.ctbl`` in
    an output folder; ``STEM.itksnap.txt`` and ``STEM.ctbl`` beside a single output file."""
    folder = Path(output).parent
    base = stem if single_file else "labels"
    return folder / f"{base}{ITKSNAP_SUFFIX}", folder / f"{base}{SLICER_SUFFIX}"


def is_label_description(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a label description or colour table kneeseg wrote (its first lines say so)."""
    name = Path(path).name.lower()
    return name.endswith((ITKSNAP_SUFFIX, SLICER_SUFFIX)) and holds_within(path, _WRITTEN_BY, 200)


def write_label_descriptions(paths: tuple[Path, Path], labels: dict[str, int]) -> None:
    """Write the ITK-SNAP description and the Slicer colour table to ``paths``, atomically."""
    itksnap, slicer = paths
    atomic_write_text(itksnap, itksnap_label_text(labels))
    atomic_write_text(slicer, slicer_colour_table_text(labels))
