"""QC pictures: the three central planes of a scan with bone contours, one PNG per case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneeseg import __version__
from kneeseg.io import atomic_path

COLOURS = {1: "#e6194b", 2: "#3cb44b", 3: "#4363d8"}
# The PNG's Software text (before its image data): a picture kneeseg may replace.
OVERLAY_MARK = b"tEXtSoftware\x00kneeseg"


def save_overlay(image: np.ndarray, labels: np.ndarray, spacing_zyx, path: Path, title: str = "",
                 reference: np.ndarray | None = None, centre=None) -> None:
    """Axial, coronal and sagittal planes through ``centre`` (z, y, x; default: the bones' centre);
    contours of each label (dashed: the reference, when given). Aspect ratios follow the voxel spacing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if centre is None:
        fg = np.argwhere(labels > 0)
        centre = fg.mean(0).astype(int) if len(fg) else np.array(labels.shape) // 2
    lo, hi = np.percentile(image, [1, 99.5])
    sz, sy, sx = spacing_zyx
    planes = [  # (image plane, label plane, reference plane, aspect, name)
        (lambda a: a[centre[0]], sy / sx, "axial"),
        (lambda a: a[:, centre[1]][::-1], sz / sx, "coronal"),
        (lambda a: a[:, :, centre[2]][::-1], sz / sy, "sagittal"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
    for ax, (cut, aspect, name) in zip(axes, planes):
        ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        for value, colour in COLOURS.items():
            plane = cut(labels) == value
            if plane.any():
                ax.contour(plane, [0.5], colors=colour, linewidths=1.0)
            if reference is not None and (cut(reference) == value).any():
                ax.contour(cut(reference) == value, [0.5], colors=colour, linewidths=0.8, linestyles="dashed")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title + "   (red femur, green tibia, blue patella" + (", dashed: reference)" if reference is not None else ")"))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=70, metadata={"Software": f"kneeseg {__version__} (matplotlib)"})
    plt.close(fig)


def evaluation_overlay_paths(folder: Path, case: str) -> tuple[Path, Path]:
    """Where :func:`save_evaluation_overlays` draws a case: through the bones, and through the largest error."""
    return Path(folder) / f"{case}.png", Path(folder) / f"{case}_largest_error.png"


def save_evaluation_overlays(summary: dict, folder: Path, images: Path | None = None) -> None:
    """For each case of an evaluation ``summary`` (kneeseg.evaluation.evaluate): ``CASE.png``, the
    prediction (solid) and reference (dashed) through the bones' centre, and ``CASE_largest_error.png``
    through the largest region where the two differ. Drawn on ``images/CASE_0000.*`` when given,
    else on the reference labels."""
    from kneeseg.evaluation.metrics import largest_disagreement
    from kneeseg.io import read_image

    for case in summary["per_case"]:
        reference, geometry = read_image(case["reference"])
        predicted, _ = read_image(case["prediction"])
        background = reference.astype(np.float32)
        if images is not None:
            found = sorted(Path(images).glob(f"{case['case']}_0000.*"))
            if found:
                background = read_image(found[0], np.float32)[0]
        through_bones, through_error = evaluation_overlay_paths(folder, case["case"])
        save_overlay(background, predicted, geometry.spacing_zyx, through_bones,
                     f"{case['case']}: Dice " + ", ".join(f"{k} {v['dice']:.3f}" for k, v in case["metrics"].items()),
                     reference=reference)
        worst = largest_disagreement(reference, predicted)
        if worst is not None:
            (z, y, x), size = worst
            save_overlay(background, predicted, geometry.spacing_zyx, through_error,
                         f"{case['case']}: largest disagreement, {size * np.prod(geometry.spacing_zyx):.0f} mm³ "
                         f"around voxel (x {x}, y {y}, z {z})", reference=reference, centre=(z, y, x))
