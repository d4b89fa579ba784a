"""Quality checks of a prediction on a scan the model never saw: warnings, not errors.

A model applied to a scan unlike its training scans (another body part, another protocol, a header
with the wrong orientation) still returns labels; these checks say when the labels do not look like
the knee bones the model learnt:

- a bone that every training label map had is missing;
- a bone's volume lies far outside (VOLUME_FACTOR x) the range of the training labels' volumes; a
  bone that reaches a face of the image, cut by the field of view, is not judged too small (a scan
  cut to ±20 mm around the joint line held a 22 ml femur, a fifth of the training label's, read well);
- the bones are out of anatomical order, judged in the scan's patient coordinates (LPS: +z is
  superior, +y posterior): the femur must lie superior to the tibia, the patella anterior to the femur;
- the model is unsure of what it found: more than ``UNCERTAIN_LIMIT`` of the voxels it calls bone
  have a winning probability under ``CONFIDENT`` (the mean of the folds, test-time mirrors and
  scales, so members that disagree count as unsure). A model that cannot read a scan (a contrast
  it never learnt, another joint, noise) still calls voxels bone, but without conviction;
- the scan was read with its contrast inverted (kneeseg.inference.predictor): the model was unsure
  of the scan as recorded and sure of it inverted (a fat-suppressed or inverted protocol, say);
- the scan was read by the model's second reader (kneeseg.inference.predictor): the model stayed
  unsure of it (as recorded, and inverted where it tried); the warning says whether the second reader
  kept its reading of the scan inverted, and where it taught the model the scan's contrast
  (kneeseg.inference.contrast), that the labels are both readings'.

Together with the acquisition warnings (kneeseg.inference.acquisition) they are printed per case and
recorded in the statistics output (``qc_warnings``).
"""

from __future__ import annotations

import numpy as np

from kneeseg.arrays import faces, sampled_centre
from kneeseg.io import Geometry

VOLUME_FACTOR = 3.0
SUPERIOR, POSTERIOR = 2, 1  # LPS axes of a physical point (x, y, z)
# Shares unsure (winning probability under 0.9) on half B of the real scan. The built-in model (which
# saw it): 5-8 % as recorded and under gamma 2, 47 % under a non-monotonic contrast, 83-84 % inverted
# and on noise. A model trained 60 minutes on half A only (24 epochs, softer probabilities): 21-23 %
# as recorded, at 1 mm, under gamma 2; 27-32 % with the field of view cut to the joint or rotated 12
# degrees (Dice 0.96-0.97: fine); 47 % non-monotonic (Dice 0.22), 62 % inverted (0.00), 75 % noise.
CONFIDENT = 0.9
UNCERTAIN_LIMIT = 0.35


def uncertain_share(probabilities: np.ndarray) -> float | None:
    """Share of the voxels whose most probable class is not background (class 0 of ``probabilities``,
    (K, z, y, x)) and whose winning probability is under ``CONFIDENT``; None where none is bone."""
    winner = probabilities.argmax(0)
    bone = winner != 0
    found = int(np.count_nonzero(bone))
    if not found:
        return None
    return float(np.count_nonzero(probabilities.max(0)[bone] < CONFIDENT)) / found


def prediction_warnings(labels: np.ndarray, geometry: Geometry, bones: dict[str, int],
                        volume_ranges: dict[str, list[float]], unsure: float | None = None,
                        read_inverted: bool = False, unsure_as_recorded: float | None = None,
                        second_reading: bool = False, unsure_first_reading: float | None = None,
                        contrast_taught: bool = False, second_inverted: bool = False) -> list[str]:
    """What looks wrong in a (z, y, x) label map of ``bones`` (name -> value), given the training
    labels' ``volume_ranges`` (name -> [min, max] mm3, the plans' ``label_volumes_mm3``; a name
    without a range is not judged) and the prediction's ``unsure`` share (:func:`uncertain_share`);
    ``read_inverted``: the scan was read with its contrast inverted, having been ``unsure_as_recorded``
    of the bone it found as recorded (None: it found none); ``second_reading``: the scan was read by
    the model's second reader, the model having been ``unsure_first_reading`` of the bone it found;
    ``contrast_taught``: the second reader taught the model the scan's contrast and the labels are
    both readings' (kneeseg.inference.contrast); ``second_inverted``: the second reader kept its
    reading of the scan with the contrast inverted."""
    warnings, centre = [], {}
    if second_reading:
        before = ("found no bone" if unsure_first_reading is None
                  else f"was unsure of {100 * unsure_first_reading:.0f} % of the bone it found")
        how = " with the scan's contrast inverted" if second_inverted else ""
        taught = ", which taught it the scan's contrast (the labels are both readings')" if contrast_taught else ""
        warnings.append(f"read by the model's second reader{how}{taught}: the model {before}; check every bone")
    if read_inverted:
        before = ("found no bone" if unsure_as_recorded is None
                  else f"was unsure of {100 * unsure_as_recorded:.0f} % of the bone it found")
        warnings.append(f"read with its contrast inverted: the model {before} as recorded, and is unsure of "
                        f"{100 * (unsure or 0.0):.0f} % inverted; check every bone")
    if unsure is not None and unsure > UNCERTAIN_LIMIT:
        who, it = (("the two readings are", "they") if contrast_taught else ("the second reader is", "it") if second_reading
                   else ("the model is", "it"))
        warnings.append(f"{who} unsure of {100 * unsure:.0f} % of the bone {it} found (more than {100 * UNCERTAIN_LIMIT:.0f} %): "
                        f"{it} may not read this scan (another contrast, another joint, no knee); check every bone")
    voxel_mm3 = float(np.prod(geometry.spacing))
    for name, value in bones.items():
        mask = labels == value
        voxels = int(np.count_nonzero(mask))
        low, high = volume_ranges.get(name, [0.0, float("inf")])
        if voxels == 0:
            if low > 0:
                warnings.append(f"no {name} found, though every training label map had one")
            continue
        volume = voxels * voxel_mm3
        # Not too small where the bone reaches the edge of the image: the field of view cut it.
        too_small = low > 0 and volume < low / VOLUME_FACTOR and not any(face.any() for face in faces(mask))
        if too_small or volume > VOLUME_FACTOR * high:
            warnings.append(f"{name} volume {volume / 1000:.1f} ml lies far outside the training labels' "
                            f"{low / 1000:.1f}-{high / 1000:.1f} ml")
        centre[name.lower()] = geometry.index_to_physical(sampled_centre(mask)[None, ::-1])[0]  # by lower-case name: "Femur" is the femur
    if "femur" in centre and "tibia" in centre and centre["femur"][SUPERIOR] <= centre["tibia"][SUPERIOR]:
        warnings.append("the femur is not superior to the tibia in the scan's patient coordinates "
                        "(not a knee, or a header with the wrong orientation?)")
    if "patella" in centre and "femur" in centre and centre["patella"][POSTERIOR] >= centre["femur"][POSTERIOR]:
        warnings.append("the patella is not anterior to the femur in the scan's patient coordinates "
                        "(not a knee, or a header with the wrong orientation?)")
    return warnings
