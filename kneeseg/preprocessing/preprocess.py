"""One preprocessing function for training and prediction: canonical orientation, crop to nonzero,
normalise, resample.

Every case carries a properties record (original geometry, crop box, shapes, spacings) from which
:func:`kneeseg.preprocessing.restore.restore_original` maps a prediction back onto the input's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kneeseg.fingerprint import mask_bbox, nonzero_mask
from kneeseg.io import Geometry
from kneeseg.io.orientation import Orientation
from kneeseg.planning.plans import ConfigurationPlan
from kneeseg.preprocessing.normalization import normalize_and_resample
from kneeseg.preprocessing.resampling import resample_channels, resample_labels, target_shape

MAX_LOCATIONS_PER_CLASS = 2000


@dataclass
class PreprocessedCase:
    data: np.ndarray  # float32 (C, Z, Y, X) at the plan's spacing
    seg: np.ndarray | None  # int8 (Z, Y, X) or None at prediction time
    properties: dict


def preprocess_case(
    images: list[np.ndarray],
    geometry: Geometry,
    config: ConfigurationPlan,
    seg: np.ndarray | None = None,
    labels: list[int] | None = None,
    rng: np.random.Generator | None = None,
) -> PreprocessedCase:
    """Preprocess one case (channel arrays in (z, y, x)) for ``config``.

    With ``seg`` (training), the label map is resampled too and up to MAX_LOCATIONS_PER_CLASS voxel positions per foreground class are sampled for
    foreground-oversampled patch selection.
    """
    orientation = Orientation.of(geometry.direction)
    images = [orientation.to_canonical(np.asarray(im)) for im in images]
    spacing = orientation.spacing(geometry.spacing_zyx)
    nonzero = nonzero_mask(images)
    box = mask_bbox(nonzero)
    crop = tuple(slice(lo, hi) for lo, hi in box)
    data = np.empty((len(images), *(hi - lo for lo, hi in box)), np.float32)
    for c, image in enumerate(images):  # crop and convert in one pass: no full-size float copy
        data[c] = np.asarray(image)[crop]
    new_shape = target_shape(data.shape[1:], spacing, config.spacing)
    separate = config.resampling.separate_z_axis
    data = normalize_and_resample(data, config.normalization, config.use_mask_for_norm,
                                  lambda channels: resample_channels(channels, new_shape, separate),
                                  inside=nonzero[crop].numpy())
    properties = {
        "geometry": geometry.to_dict(),
        "orientation": orientation.to_dict(),
        "canonical_shape": orientation.shape(geometry.shape_zyx),
        "crop_bbox": box,
        "shape_after_crop": [hi - lo for lo, hi in box],
        "original_spacing": spacing,
        "spacing": list(config.spacing),
        "shape_after_resampling": list(new_shape),
        "separate_z_axis": separate,
    }
    out_seg = None
    if seg is not None:
        labels = labels or sorted(int(v) for v in np.unique(seg) if v != 0)
        seg = orientation.to_canonical(np.asarray(seg))
        out_seg = resample_labels(seg[crop].astype(np.int8), new_shape, labels, separate)
        rng = rng or np.random.default_rng(0)
        locations = {}
        for value in labels:
            if value == 0:
                continue
            where = np.argwhere(out_seg == value)
            if len(where) > MAX_LOCATIONS_PER_CLASS:
                where = where[np.sort(rng.choice(len(where), MAX_LOCATIONS_PER_CLASS, replace=False))]
            locations[str(value)] = where.astype(int).tolist()
        properties["class_locations"] = locations
    return PreprocessedCase(data=data, seg=out_seg, properties=properties)
