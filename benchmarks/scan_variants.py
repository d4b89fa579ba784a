"""Versions of a scan as other acquisitions would have recorded it: for robustness benchmarks and tests.

The same knee (image and label) stored in another axis order or with flipped axes (sagittal
acquisitions, other vendors), re-recorded with thick slices (0.7 x 0.7 x 2 mm 2D protocols), with
more noise (lower field, faster sequences), shaded by a receive coil's falling sensitivity, with
the air left as noise where this scanner zeroes it (most scanners), or smoothed by a filter.
Every function keeps the anatomy where it is in scanner space, so a prediction can be compared with
the label transformed the same way.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from kneeseg.fingerprint.air import noise_sigma
from kneeseg.io import Geometry
from kneeseg.preprocessing.resampling import along_axis, area_weights, target_shape


def stored_differently(image: sitk.Image, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> sitk.Image:
    """The same voxels in space, stored with axes permuted (SimpleITK order) and then flipped."""
    return sitk.Flip(sitk.PermuteAxes(image, list(order)), list(flips))


def resampled_grid(geometry: Geometry, spacing_xyz: tuple[float, float, float]) -> Geometry:
    """The grid covering the same extent as ``geometry`` at ``spacing_xyz`` (voxel corners aligned)."""
    size = tuple(reversed(target_shape(geometry.shape_zyx, geometry.spacing_zyx, tuple(reversed(spacing_xyz)))))
    # Keep the extent: the first voxel centre moves by half the change of the voxel size.
    shift = [(n_old * s_old / n_new - s_old) / 2 for n_old, s_old, n_new in zip(geometry.size, geometry.spacing, size)]
    origin = geometry.index_to_physical(np.array([[d / s for d, s in zip(shift, geometry.spacing)]]))[0]
    new_spacing = tuple(n_old * s_old / n_new for n_old, s_old, n_new in zip(geometry.size, geometry.spacing, size))
    return Geometry(size=size, spacing=new_spacing, origin=tuple(float(o) for o in origin), direction=geometry.direction)


def area_average(volume: np.ndarray, new_shape) -> np.ndarray:
    """Each new voxel the exact volume-weighted mean of the old voxels it overlaps (float32)."""
    out = np.asarray(volume, np.float32)
    for axis, n_new in enumerate(new_shape):
        if out.shape[axis] != n_new:
            out = along_axis(out, area_weights(out.shape[axis], int(n_new)), axis)
    return np.ascontiguousarray(out)


def _stored_as(values: np.ndarray, dtype) -> np.ndarray:
    """Float ``values`` as a scan of ``dtype`` stores them: integer types rounded and kept in range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(dtype)


def thick_slices(image: np.ndarray, labels: np.ndarray | None, geometry: Geometry,
                 spacing_xyz: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Re-record a (z, y, x) image at coarser ``spacing_xyz``: each new voxel averages the old voxels it
    covers (what a thick slice measures); labels go by the class covering most of each new voxel."""
    grid = resampled_grid(geometry, spacing_xyz)
    out = _stored_as(area_average(image, grid.shape_zyx), image.dtype)
    out_labels = None
    if labels is not None:
        values = sorted(int(v) for v in np.unique(labels))
        fractions = np.stack([area_average(labels == v, grid.shape_zyx) for v in values])
        out_labels = np.asarray(values)[np.argmax(fractions, axis=0)].astype(labels.dtype)
    return out, out_labels, grid


def with_more_noise(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """The image at ``factor`` times its noise level (SNR / factor): Rician noise, as in a magnitude
    image, added inside the scanner's nonzero region; background zeros stay zero."""
    sigma = noise_sigma(image) * np.sqrt(max(factor ** 2 - 1.0, 0.0))
    a = image.astype(np.float32)
    noisy = np.sqrt((a + rng.normal(0, sigma, a.shape)) ** 2 + rng.normal(0, sigma, a.shape) ** 2)
    noisy[a == 0] = 0
    return _stored_as(noisy, image.dtype)


def with_coil_shading(image: np.ndarray, axis: int, ratio: float) -> np.ndarray:
    """The image as a receive coil whose sensitivity falls by ``ratio`` : 1 across the field of view
    along array ``axis`` would record it: multiplied by a field that is log-linear along that axis
    (1 at the first slice, 1 / ratio at the last), the smooth shading of a low-field surface coil.
    Zeros stay zero. The scan's noise is shaded with its signal, so the dim side keeps the scan's SNR
    (a real coil would leave it noisier there; ``with_more_noise`` adds that separately)."""
    n = image.shape[axis]
    profile = np.exp(-np.log(ratio) * np.arange(n) / max(n - 1, 1)).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n
    return _stored_as(image.astype(np.float32) * profile.reshape(shape), image.dtype)


def with_noisy_background(image: np.ndarray, rng: np.random.Generator, sigma: float | None = None) -> np.ndarray:
    """The image as a scanner that does not zero the air would store it: the zero voxels become
    Rician noise (a magnitude image's noise where there is no signal) of ``sigma``, by default the
    scan's own noise level (``noise_sigma``, which a coarse grid's tissue texture inflates)."""
    sigma = noise_sigma(image) if sigma is None else sigma
    out = image.astype(np.float32)
    air = out == 0
    n = int(np.count_nonzero(air))
    out[air] = np.hypot(rng.normal(0, sigma, n), rng.normal(0, sigma, n))
    return _stored_as(out, image.dtype)


def smoothed(image: np.ndarray, spacing_zyx, sigma_mm: float) -> np.ndarray:
    """The image through a Gaussian filter of ``sigma_mm`` (a scanner's or a viewer's denoising filter)."""
    sigma = [sigma_mm / s for s in spacing_zyx]
    return _stored_as(ndimage.gaussian_filter(image.astype(np.float32), sigma), image.dtype)


def rotated(image: np.ndarray, labels: np.ndarray | None, geometry: Geometry,
            degrees_xyz: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray | None]:
    """The knee turned inside the scanner by ``degrees_xyz`` about the image's x, y and z axes through
    its centre, recorded on the same grid (linear interpolation; labels by nearest neighbour); what
    falls outside the grid is lost and what comes in is 0."""
    transform = sitk.Euler3DTransform()
    centre = geometry.index_to_physical(np.array([[(n - 1) / 2 for n in geometry.size]]))[0]
    transform.SetCenter(tuple(float(c) for c in centre))
    transform.SetRotation(*(float(np.deg2rad(a)) for a in degrees_xyz))

    def turn(array: np.ndarray, interpolator) -> np.ndarray:
        moving = geometry.apply_to(sitk.GetImageFromArray(array))
        return sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, interpolator, 0.0))

    out = _stored_as(turn(image.astype(np.float32), sitk.sitkLinear), image.dtype)
    return out, None if labels is None else turn(labels, sitk.sitkNearestNeighbor).astype(labels.dtype)


def with_contrast(image: np.ndarray, quantiles: list[float], values: list[float]) -> np.ndarray:
    """The scan under another contrast: each nonzero voxel mapped through the piecewise-linear curve that
    takes the scan's own intensity ``quantiles`` (of its nonzero voxels) to ``values`` (shares of its
    99th percentile). Zeros (a zeroed air) stay zero. E.g. ([0, 0.5, 0.8, 1], [0, 0.9, 0.3, 0.1]): the
    brightest tissue darkened, the middle brightened (a non-monotonic change)."""
    a = image.astype(np.float32)
    body = a != 0
    where = np.quantile(a[body], quantiles) + np.arange(len(quantiles)) * 1e-3
    top = float(np.percentile(a[body], 99))
    out = np.zeros_like(a)
    out[body] = np.interp(a[body], where, np.asarray(values, np.float32) * top)
    return _stored_as(np.maximum(out, 0), image.dtype)


def with_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Another monotonic contrast: nonzero voxels as (x / max) ** gamma * max."""
    a = image.astype(np.float32)
    top = float(a.max())
    return _stored_as(np.where(a > 0, (np.maximum(a, 0) / top) ** gamma * top, a), image.dtype)


def inverted(image: np.ndarray) -> np.ndarray:
    """Inverted contrast (dark fat, bright fluid and cortex): nonzero voxels as p99 - x, kept above 1
    so that no body voxel becomes 0 (the air a scanner zeroed stays 0)."""
    a = image.astype(np.float32)
    top = float(np.percentile(a[a != 0], 99))
    return _stored_as(np.where(a != 0, np.clip(top - a, 1.0, None), 0.0), image.dtype)


def cropped(image: np.ndarray, labels: np.ndarray | None, geometry: Geometry,
            box_zyx: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """The scan with a smaller field of view: the voxels of ``box_zyx`` (array slices), on a grid whose
    origin moves to the box's first voxel."""
    start_xyz = [box_zyx[2 - a].indices(geometry.size[a])[0] for a in range(3)]
    image = np.ascontiguousarray(image[box_zyx])
    origin = geometry.index_to_physical(np.array([start_xyz], float))[0]
    grid = Geometry(size=tuple(reversed(image.shape)), spacing=geometry.spacing, origin=tuple(float(o) for o in origin),
                    direction=geometry.direction)
    return image, None if labels is None else np.ascontiguousarray(labels[box_zyx]), grid
