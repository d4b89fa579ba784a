"""Post-processing steps on a label map, each described by a small dict (postprocessing.json).

Every operation is an entry of ``OPERATIONS``: its parameters (each checked where a file or a caller
hands it in, so that a value that cannot be honoured is an error, not a no-op), what it does, and
whether the chooser treats it as an anatomical rule (kept unless it costs Dice).

- ``{"op": "keep_largest_foreground", "n": 3}``: keep the n largest connected components of the
  union of all bones (the reference paper's "three largest components");
- ``{"op": "relabel_enclosed", "label": L}``: every component of L (the largest too) of which more
  than half of the face neighbours belong to other bones takes the label most of those have (with
  ``"share": S``, more than S of them), if it is under half the piece of that bone it touches. Bones
  never touch in the labels (cartilage lies between), so a piece mostly wrapped in another bone, or
  glued to it over a large part of its surface, is that bone labelled wrongly (e.g. a block of
  femoral condyle called patella in a scan without one);
- ``{"op": "keep_largest", "label": L}``: keep the largest component of label L (with
  ``"fragments": "neighbour"``: its other pieces that touch another bone take that bone's label).
  A piece at least ``SECOND_BONE`` of the largest is never dropped (it may take a neighbour's label):
  the network has called two bones L, and dropping one would delete a bone;
- ``{"op": "remove_far", "label": L, "from": A, "max_mm": D}``: drop components of L with no voxel
  within D mm of bone A (nothing changes where the scan has no A). The knee's bones face each other
  across a few mm of cartilage, so a "patella" several cm from the femur is something else; it
  survives keep_largest when the true bone is outside the field of view, as in a half scan;
- ``{"op": "keep_side", "label": L, "of": A, "side": S}``: drop components of L whose centre does not
  lie on side S (anterior, posterior, superior, inferior, left, right) of bone A's centre, in the
  scan's patient coordinates (nothing changes where the scan has no A). The patella lies in front of
  the femur in every knee scan; a "patella" behind the femur's centre is something else (in half B
  of the real scan, which shows none, half-A models found 2.4-3.7 ml ones there, apart from any bone);
- ``{"op": "remove_small", "label": L, "min_mm3": V}``: drop components of L under V mm³ (a volume,
  not a voxel count, so that a scan at another spacing than the training labels' loses the same;
  with ``"fragments": "neighbour"`` those that touch another bone take that bone's label);
- ``{"op": "fill_holes", "label": L}``: fill background enclosed by L;
- ``{"op": "fill_holes_slices", "label": L}``: fill background enclosed by L within a slice along
  any of the three image axes. A bone's cross-section has no holes (cortex around marrow), so a
  hole in one is marrow called background; such a bite is usually open in 3D, where fill_holes
  cannot reach it (on the real scan's labels, at most 0.07 % of a bone's volume lies in such holes);
- ``{"op": "closing", "label": L, "radius_mm": R}``: morphological closing of L with a ball of
  radius R mm (smooth surfaces, as the paper did), only into background.
Removed voxels become background. Steps act on the label map alone, except keep_side, which also
needs the scan's direction (``apply_step(..., direction=)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import fill_voids
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from kneeseg.arrays import bbox_slices, sampled_centre
from kneeseg.errors import KneesegError

FRAGMENTS = ("background", "neighbour")
# Patient (LPS) axis and sign of each side: +x left, +y posterior, +z superior.
SIDES = {"left": (0, 1.0), "right": (0, -1.0), "posterior": (1, 1.0), "anterior": (1, -1.0),
         "superior": (2, 1.0), "inferior": (2, -1.0)}
ENCLOSED_SHARE = 0.5  # relabel_enclosed without "share": pieces mostly wrapped in another bone
# relabel_enclosed moves a piece into a bone only while the piece is under this share of the largest
# piece of that bone it touches: a piece of femur called patella is a small part of the femur, while a
# whole femur glued to the tibia across a joint the network filled in (seen under gamma 0.5), or the
# halves of a joint it called femur and tibia the wrong way round (a field of view cut to the joint:
# a 9.8 ml "femur" glued to a 13.7 ml "tibia" and the other way round), are not.
JOIN_BELOW = 0.5
# keep_largest drops a bone's other pieces as bits the network added. One at least this share of the
# largest is no bit but a second bone called by the same name: under a contrast its training never
# showed, with the field of view cut to the joint, a half-A model called most of the femur tibia, and
# relabel_enclosed gave that "tibia" the femur's last piece (538,403 voxels in all) beside the true
# tibia (368,295: 0.68 of it, touching no other bone); dropping it took all-bone Dice from 0.941 to
# 0.692. It stays, and the QC reports the missing femur. A piece that touches another bone still takes
# that bone's label with "fragments": "neighbour" (the default's model on the same scan: 9.1 ml of
# femur called tibia, 0.52 of its largest "tibia", went back to the femur).
SECOND_BONE = 0.5


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components of ``mask`` and their sizes (index 0, the background, sized 0)."""
    # As uint16 where they fit (fewer than 65,536 pieces): half scipy's int32 and about 4x faster. A scan
    # handed to the second reader post-processed its full grid's box with two bones' labels kept at once,
    # peaking 1.0 GB over the prediction (benchmarks/RESULTS.md).
    try:
        components, n = ndimage.label(mask, output=np.uint16)
    except RuntimeError:  # scipy: "insufficient bit-depth in requested output type"
        components, n = ndimage.label(mask)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    return components, sizes


def _ball(radius_mm: float, spacing) -> np.ndarray:
    r = [max(1, int(np.floor(radius_mm / s))) for s in spacing]
    grids = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(r, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def _reassign_fragments(region: np.ndarray, components: np.ndarray, label: int, keep: int | None = None,
                        spare: np.ndarray | None = None, enclosed_share: float | None = None,
                        joins: Callable | None = None) -> None:
    """In place: each component of ``label`` but ``keep`` takes the label most of its face neighbours
    of another bone have, or background when it touches none (those in ``spare`` then stay); with
    ``enclosed_share``, only components of which more than that share of the face neighbours are other
    bones change (to that majority bone), and only where ``joins(piece, shell, grown, bone)`` says so
    (the piece's mask on ``region[grown]`` and the face neighbours around it).
    ``region`` must reach one voxel beyond the components, so that their neighbours are inside it."""
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None or index == keep:
            continue
        grown = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, region.shape))
        piece = components[grown] == index
        shell = ndimage.binary_dilation(piece) & ~piece
        around = region[grown][shell]
        bones = around[(around != 0) & (around != label)]
        target = int(np.bincount(bones).argmax()) if bones.size else 0
        if target == 0 and spare is not None and index in spare:
            continue
        if enclosed_share is not None and (bones.size <= around.size * enclosed_share
                                           or joins is not None and not joins(piece, shell, grown, target)):
            continue
        region[grown][piece] = target


def _surface_mm(mask: np.ndarray, spacing, corner=(0, 0, 0)) -> np.ndarray:
    """Positions in mm (N, 3) of the voxels of non-empty ``mask`` with a face neighbour outside it
    (the nearest voxel of a shape to anything outside it is one of these); ``corner``: where ``mask``
    starts in the whole volume, in voxels."""
    box = bbox_slices(mask)
    inside = mask[box]
    surface = inside & ~ndimage.binary_erosion(inside, border_value=0)
    return (np.argwhere(surface) + [s.start + c for s, c in zip(box, corner)]) * np.asarray(spacing, dtype=float)


def gap_mm(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Shortest distance in mm between a voxel of mask ``a`` and one of mask ``b`` (inf if either is empty)."""
    if not a.any() or not b.any():
        return float("inf")
    near, _ = cKDTree(_surface_mm(b, spacing)).query(_surface_mm(a, spacing), k=1)
    return float(near.min())


def _remove_far(out: np.ndarray, mask: np.ndarray, anchor: np.ndarray, max_mm: float, spacing) -> None:
    """In place: the components of ``mask`` with no voxel within ``max_mm`` of ``anchor`` become background."""
    tree = cKDTree(_surface_mm(anchor, spacing))
    box = bbox_slices(mask)
    components, _ = _components(mask[box])
    for index, piece_box in enumerate(ndimage.find_objects(components), start=1):
        if piece_box is None:
            continue
        piece = components[piece_box] == index
        corner = [b.start + p.start for b, p in zip(box, piece_box)]
        surface = _surface_mm(piece, spacing, corner)
        # Every 64th surface point first: one of them near the anchor settles it (a tibia's ~10^5
        # points need not all be looked up); only a piece with none near is searched point by point.
        for points in (surface[::64], surface):
            near, _ = tree.query(points, k=1, distance_upper_bound=max_mm)
            if not np.isinf(near).all():
                break
        else:  # no voxel of the piece within max_mm of the anchor
            out[box][piece_box][piece] = 0


def _slice_holes(mask: np.ndarray) -> np.ndarray:
    """Background enclosed by ``mask`` within a slice along some axis (4-connected in the slice)."""
    filled = np.zeros_like(mask)
    for axis in range(3):
        # fill_voids floods each 2D slice's background from its border (4-connected), as scipy's
        # binary_fill_holes with a one-voxel-thick cross does, in a fraction of its time (benchmarks/RESULTS.md).
        along = np.moveaxis(filled, axis, 0)
        for index, cut in enumerate(np.moveaxis(mask, axis, 0)):
            if cut.any():
                along[index] |= fill_voids.fill(cut, in_place=False)
    return filled & ~mask


# ---- the operations: each changes ``out`` (a copy of the labels) in place ----------------------------
def _keep_largest_foreground(out: np.ndarray, step: dict, spacing) -> None:
    mask = out > 0
    box = bbox_slices(mask)  # components never leave the bounding box; labelling it is enough
    components, sizes = _components(mask[box])
    keep = np.argsort(sizes)[::-1][: step["n"]]
    keep = keep[sizes[keep] > 0]
    out[box][~np.isin(components, keep)] = 0


def _relabel_enclosed(out: np.ndarray, step: dict, spacing) -> None:
    mask = out == step["label"]
    box = bbox_slices(mask, 1)  # one voxel beyond the label: the pieces' neighbours
    components, _ = _components(mask[box])
    pieces_of: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # bone -> its components over all of ``out``, sizes

    def joins(piece: np.ndarray, shell: np.ndarray, grown: tuple[slice, ...], bone: int) -> bool:
        """``piece`` (on ``out[box][grown]``) is under JOIN_BELOW of the largest piece of ``bone`` it touches."""
        if bone not in pieces_of:
            pieces_of[bone] = _components(out == bone)
        parts, sizes = pieces_of[bone]
        where = tuple(slice(b.start + g.start, b.start + g.stop) for b, g in zip(box, grown))
        touched = parts[where][shell]
        return bool(piece.sum() < JOIN_BELOW * sizes[touched].max())

    _reassign_fragments(out[box], components, step["label"], enclosed_share=float(step.get("share", ENCLOSED_SHARE)),
                        joins=joins)


def _keep_largest(out: np.ndarray, step: dict, spacing) -> None:
    mask = out == step["label"]
    box = bbox_slices(mask, 1)  # one voxel beyond the label: the pieces' neighbours
    components, sizes = _components(mask[box])
    largest = int(np.argmax(sizes))
    bones = np.flatnonzero(sizes >= SECOND_BONE * sizes[largest])  # too large to be bits: never dropped
    if step.get("fragments") == "neighbour":
        _reassign_fragments(out[box], components, step["label"], keep=largest, spare=bones)
    else:
        out[box][(components > 0) & ~np.isin(components, bones)] = 0


def _remove_far_op(out: np.ndarray, step: dict, spacing) -> None:
    anchor = out == step["from"]
    if anchor.any():  # nothing to measure from where the scan has no such bone
        _remove_far(out, out == step["label"], anchor, float(step["max_mm"]), spacing)


def _keep_side(out: np.ndarray, step: dict, spacing, direction) -> None:
    anchor = out == step["of"]
    if not anchor.any():  # no bone to be beside where the scan has none
        return
    axis, sign = SIDES[step["side"]]
    # Millimetres towards the side per voxel step along z, y, x: the direction's row for that patient
    # axis (its columns are the x, y, z voxel axes), in z, y, x order, times the spacing.
    towards = sign * np.asarray(direction, dtype=float).reshape(3, 3)[axis, ::-1] * np.asarray(spacing, dtype=float)
    limit = float(sampled_centre(anchor) @ towards)
    mask = out == step["label"]
    box = bbox_slices(mask)
    components, sizes = _components(mask[box])
    indices = np.flatnonzero(sizes)
    centres = np.asarray(ndimage.center_of_mass(mask[box], components, indices)) + [b.start for b in box]
    wrong = indices[centres @ towards <= limit]
    out[box][np.isin(components, wrong)] = 0


def _remove_small(out: np.ndarray, step: dict, spacing) -> None:
    mask = out == step["label"]
    box = bbox_slices(mask, 1)
    components, sizes = _components(mask[box])
    small = sizes * float(np.prod(spacing)) < float(step["min_mm3"])
    small[0] = False  # index 0 is the background (its size was zeroed, so it would pass as small)
    if step.get("fragments") == "neighbour":
        _reassign_fragments(out[box], np.where(small[components], components, 0), step["label"])
    else:
        out[box][small[components]] = 0


def _fill_holes(out: np.ndarray, step: dict, spacing) -> None:
    mask = out == step["label"]
    box = bbox_slices(mask, 1)  # enclosed background lies inside the bounding box
    region = out[box]
    region[fill_voids.fill(mask[box], in_place=False) & (region == 0)] = step["label"]


def _fill_holes_slices(out: np.ndarray, step: dict, spacing) -> None:
    mask = out == step["label"]
    box = bbox_slices(mask, 1)
    region = out[box]
    region[_slice_holes(mask[box]) & (region == 0)] = step["label"]


def _closing(out: np.ndarray, step: dict, spacing) -> None:
    mask = out == step["label"]
    # Pad so that closing near the border does not erode from the outside.
    k = _ball(step["radius_mm"], spacing)
    pad = max(k.shape) // 2 + 1
    box = bbox_slices(mask, pad)  # dilation reaches at most the ball's radius beyond the mask
    closed = ndimage.binary_closing(np.pad(mask[box], pad), structure=k)[tuple(slice(pad, -pad) for _ in range(3))]
    region = out[box]
    region[closed & (region == 0)] = step["label"]


# ---- the registry ------------------------------------------------------------------------------------
def _label(value, labels) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be a bone's label value (an integer >= 1)"
    if labels is not None and value not in labels:
        return f"must be one of the model's bone labels {sorted(labels)}"
    return None


def _count(value, labels) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else "must be an integer >= 1"


def _positive(value, labels) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0
    return None if ok else "must be a positive number"


def _share(value, labels) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    return None if ok else "must be a number between 0 and 1"


def _side(value, labels) -> str | None:
    return None if isinstance(value, str) and value in SIDES else f"must be one of {', '.join(SIDES)}"


def _fragments(value, labels) -> str | None:
    return None if value in FRAGMENTS else f"must be one of {', '.join(FRAGMENTS)}"


Check = Callable[[object, "set[int] | None"], "str | None"]


@dataclass(frozen=True)
class Operation:
    """One post-processing operation: its parameters (name -> check) and what it does."""

    apply: Callable[..., None]  # (out, step, spacing), and the scan's direction if ``oriented``
    required: dict[str, Check]
    optional: dict[str, Check]
    # The chooser keeps an anatomical rule (a bone is one solid piece, apart from the others, near its
    # joint) unless it costs Dice; any other operation only where it helps.
    anatomy: bool
    acts_on_label: bool = True  # a no-op when the label map has none of ``step["label"]``
    oriented: bool = False  # needs the scan's direction (where patient anterior, superior, left lie)


OPERATIONS: dict[str, Operation] = {
    "keep_largest_foreground": Operation(_keep_largest_foreground, {"n": _count}, {}, anatomy=True, acts_on_label=False),
    "relabel_enclosed": Operation(_relabel_enclosed, {"label": _label}, {"share": _share}, anatomy=True),
    "remove_far": Operation(_remove_far_op, {"label": _label, "from": _label, "max_mm": _positive}, {}, anatomy=True),
    "keep_side": Operation(_keep_side, {"label": _label, "of": _label, "side": _side}, {}, anatomy=True, oriented=True),
    "keep_largest": Operation(_keep_largest, {"label": _label}, {"fragments": _fragments}, anatomy=True),
    "remove_small": Operation(_remove_small, {"label": _label, "min_mm3": _positive}, {"fragments": _fragments}, anatomy=True),
    "fill_holes_slices": Operation(_fill_holes_slices, {"label": _label}, {}, anatomy=True),
    "fill_holes": Operation(_fill_holes, {"label": _label}, {}, anatomy=False),
    "closing": Operation(_closing, {"label": _label, "radius_mm": _positive}, {}, anatomy=False),
}


def step_problem(step, labels: set[int] | None = None) -> str | None:
    """Why ``step`` cannot be applied as written (None if it can); ``labels``: the bone label values
    it may name (None: any positive integer)."""
    op = step.get("op") if isinstance(step, dict) else None
    if op not in OPERATIONS:
        return f"unknown post-processing op {op!r} (known: {', '.join(OPERATIONS)})"
    operation = OPERATIONS[op]
    missing = [k for k in operation.required if k not in step]
    if missing:
        return f"{op}: missing {', '.join(missing)}"
    unknown = sorted(set(step) - {"op", *operation.required, *operation.optional})
    if unknown:
        return f"{op}: unknown parameter(s) {', '.join(unknown)}"
    for key, check in {**operation.required, **operation.optional}.items():
        problem = check(step[key], labels) if key in step else None
        if problem:
            return f"{op}: {key} {step[key]!r} {problem}"
    return None


def apply_step(labels: np.ndarray, step: dict, spacing, direction=None) -> np.ndarray:
    """A copy of ``labels`` with ``step`` applied (``spacing``: z, y, x mm; ``direction``: the scan's 3x3
    direction, row-major as SimpleITK gives it, which keep_side needs)."""
    problem = step_problem(step)
    if problem:
        raise KneesegError(f"post-processing step {step}: {problem}")
    out = labels.copy()
    operation = OPERATIONS[step["op"]]
    if operation.oriented and direction is None:
        raise KneesegError(f"post-processing step {step}: needs the scan's direction")
    if (out == step["label"]).any() if operation.acts_on_label else (out > 0).any():
        operation.apply(out, step, spacing, *([direction] if operation.oriented else []))
    return out


def checked_steps(document, source, labels: set[int] | None = None) -> list[dict]:
    """The steps of ``document`` (a postprocessing.json read from ``source``), refused with one line
    naming the file and the step if one cannot be applied as written (``labels``: the model's bone
    label values), so that a hand-edited file fails before any prediction is made."""
    steps = document.get("steps") if isinstance(document, dict) else None
    if not isinstance(steps, list):
        raise KneesegError(f"{source}: no list of post-processing 'steps'")
    for number, step in enumerate(steps, start=1):
        problem = step_problem(step, labels)
        if problem:
            raise KneesegError(f"{source}: step {number}: {problem}")
    return steps


def describe_steps(steps: list[dict]) -> str:
    """One line for reports: 'relabel_enclosed 3 (over 0.2 attached), keep_side 3 (anterior of 1),
    keep_largest 1 (relabel pieces), fill_holes 1, ...' or 'none'."""
    def one(step: dict) -> str:
        text = step["op"] + (f" {step['label']}" if "label" in step else "")
        if "side" in step:
            text += f" ({step['side']} of {step['of']})"
        if "share" in step:
            text += f" (over {step['share']:g} attached)"
        return text + (" (relabel pieces)" if step.get("fragments") == "neighbour" else "")
    return ", ".join(one(st) for st in steps) or "none"


def reach(steps: list[dict], spacing) -> int:
    """Voxels beyond the bones' bounding box that ``steps`` look at or write: one (a piece's face
    neighbours, the rim around an enclosed hole) or a closing's ball and its padding."""
    return max([1] + [max(_ball(step["radius_mm"], spacing).shape) // 2 + 2 for step in steps if step["op"] == "closing"])


def apply_postprocessing(labels: np.ndarray, steps: list[dict], spacing, direction=None) -> np.ndarray:
    """A copy of ``labels`` with ``steps`` applied in order (``direction``: as for :func:`apply_step`). They run on the bones' bounding box
    widened by their :func:`reach` (every step acts on bone and next to it; outside the box all is
    background), so a 0.35 mm scan's air is never copied or searched; the result is the same as
    applying them to the whole label map."""
    if not steps:
        return labels.copy()
    box = bbox_slices(labels > 0, reach(steps, spacing))
    region = labels[box]
    for step in steps:
        region = apply_step(region, step, spacing, direction)
    out = labels.copy()
    out[box] = region
    return out
