"""QC pictures: the three central planes of a scan with bone contours, one PNG per case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneeseg.io import atomic_path

COLOURS = {1: "#e6194b", 2: "#3cb44b", 3: "#4363d8"}


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
        fig.savefig(tmp, dpi=70)
    plt.close(fig)
