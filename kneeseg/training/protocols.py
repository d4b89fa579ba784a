"""Augmentation that shows the network its training scans as other low-field protocols would record them.

A user's scanner records another sequence than the training scans' (T1 or PD spin echo, T2 fast spin
echo, STIR, 3D gradient echo): the same tissues at other relative brightness, fat and fluid swapped
or inverted, and often another field of view. Shape does not change with the sequence, so the
network is shown each training patch under random contrasts, and so has to find bones by their shape
and edges rather than by one scan's grey values:

- :class:`ContrastTransferTransform`: every voxel's intensity through one random transfer function:
  increasing (another monotonic contrast), decreasing (inverted: dark fat, bright fluid) or neither
  (non-monotonic: e.g. fat dark and fluid bright while muscle stays grey).
- :class:`TissueContrastTransform`: the generative idea of SynthSeg (Billot et al., Medical Image
  Analysis 2023): each tissue gets a random intensity of its own, tissues being the label map's
  structures crossed with intensity clusters of the image itself (cortex and marrow, fat, muscle and
  fluid fall into different clusters), keeping a random share of each tissue's texture.
- :class:`FieldOfViewTransform`: the scan ends at a random plane (a field of view that stops at the
  joint line or cuts a shaft): beyond it the patch is empty, as the sliding window pads a real scan.

Intensities are the preprocessed ones (z-scored per scan); voxels that are exactly 0 (air a scanner
stored as zeros, padding) stay 0, as they do in a new scan. numpy and scipy only: these run in forked
augmentation workers, as the other transforms do, seeded through numpy's global generator.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

MIN_BODY_VOXELS = 64  # fewer non-air voxels than this in a patch: nothing to remap
CONTRAST_KINDS = ("monotonic", "inverted", "non-monotonic")
DARK_SHARE = 0.25  # of the intensity range: where signal voids stay whatever the contrast
VOID_QUANTILE = 0.3  # the darkest voxels up to this quantile (at most) count as signal voids


def _body(channel: np.ndarray) -> np.ndarray:
    return channel != 0


def dark_values(low: float, high: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random intensities in the darkest ``DARK_SHARE`` of the range ``low``-``high``: what a
    signal void (air, cortical bone, tendon) records in every MRI sequence."""
    return rng.uniform(low, low + DARK_SHARE * (high - low), n)


def random_transfer(x: np.ndarray, kind: str, knots: int, rng: np.random.Generator, dark_voids: bool = True) -> np.ndarray:
    """``x`` through a random piecewise-linear curve with values within the 1-99 % range of ``x`` (so
    the result keeps the z-scored scale), ``knots`` knots at quantiles of ``x``. With ``dark_voids``
    the first two knots, at the minimum and at a random quantile up to ``VOID_QUANTILE``, stay dark
    (:func:`dark_values`: signal voids are dark in every sequence) and the rest lie evenly above;
    without, all lie evenly. The other knots' values are sorted up for 'monotonic', down for
    'inverted' (the brightest tissue of the scan, often fat, becomes the darkest), as drawn for
    'non-monotonic'."""
    if kind not in CONTRAST_KINDS:
        raise ValueError(f"kind {kind!r}: not one of {CONTRAST_KINDS}")
    if knots < 3:
        raise ValueError(f"knots {knots}: at least 3")
    low, high = (float(v) for v in np.quantile(x, [0.01, 0.99]))
    if dark_voids:
        quantiles = np.concatenate([[0.0], np.linspace(rng.uniform(0.02, VOID_QUANTILE), 1.0, knots - 1)])
        dark = np.sort(dark_values(low, high, 2, rng))
    else:
        quantiles, dark = np.linspace(0.0, 1.0, knots), np.zeros(0)
    where = np.quantile(x, quantiles) + np.arange(knots) * 1e-6  # strictly increasing, also where quantiles coincide
    free = rng.uniform(dark[-1] if dark.size and kind == "monotonic" else low, high, knots - dark.size)
    if kind != "non-monotonic":
        free = np.sort(free)[::-1] if kind == "inverted" else np.sort(free)
    return np.interp(x, where, np.concatenate([dark, free])).astype(x.dtype, copy=False)


class ContrastTransferTransform(AbstractTransform):
    """Per sample, with probability ``p_per_sample``: each channel's non-air voxels through
    :func:`random_transfer`, of a kind drawn with ``kind_weights`` (monotonic, inverted,
    non-monotonic), a number of knots in ``knots`` (inclusive) and signal voids kept dark with
    probability ``p_dark_voids`` (else the curve treats them like any other voxel: a plain inversion
    makes them bright)."""

    def __init__(self, p_per_sample: float = 0.3, kind_weights: tuple[float, float, float] = (0.4, 0.2, 0.4),
                 knots: tuple[int, int] = (3, 7), p_dark_voids: float = 0.7, data_key: str = "data"):
        self.p_per_sample, self.knots, self.p_dark_voids, self.data_key = p_per_sample, knots, p_dark_voids, data_key
        self.kind_weights = np.asarray(kind_weights, float) / np.sum(kind_weights)

    def __call__(self, **data_dict):
        data = data_dict[self.data_key]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            rng = np.random.default_rng(np.random.randint(2**31))  # follows the worker's seeded global stream
            kind = CONTRAST_KINDS[rng.choice(len(CONTRAST_KINDS), p=self.kind_weights)]
            dark_voids = bool(rng.uniform() < self.p_dark_voids)
            for channel in data[b]:
                body = _body(channel)
                if np.count_nonzero(body) >= MIN_BODY_VOXELS:
                    knots = int(rng.integers(self.knots[0], self.knots[1] + 1))
                    channel[body] = random_transfer(channel[body], kind, knots, rng, dark_voids)
        return data_dict


def tissue_contrast(x: np.ndarray, labels: np.ndarray, clusters: int, rng: np.random.Generator,
                    texture: tuple[float, float] = (0.0, 1.0), blur: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A new image of the tissues in ``x`` (one channel, z-scored, 0 = air) and ``labels`` (same
    shape): tissues are the label values crossed with ``clusters`` intensity clusters of ``x``
    (quantile bins of its non-air voxels); each gets a random mean within the 1-99 % range of ``x``
    (the darkest cluster's tissues a dark one, :func:`dark_values`: signal voids) and keeps a random
    share (``texture``) of its voxels' deviations from its own mean; a Gaussian of random sigma
    (``blur``, voxels) then softens the new edges as partial volume would. Air stays 0."""
    body = _body(x)
    inside = x[body]
    edges = np.quantile(inside, np.linspace(0.0, 1.0, clusters + 1)[1:-1])
    tissue = np.digitize(x, edges) + clusters * np.rint(labels).astype(np.int64)
    ids = tissue[body]
    count = np.bincount(ids)
    mean = np.bincount(ids, weights=inside) / np.maximum(count, 1)
    low, high = np.quantile(inside, [0.01, 0.99])
    new_mean = rng.uniform(low, high, count.size)
    darkest = np.arange(count.size) % clusters == 0
    new_mean[darkest] = dark_values(low, high, int(darkest.sum()), rng)
    gain = rng.uniform(*texture, count.size)
    out = np.zeros_like(x)
    out[body] = new_mean[ids] + gain[ids] * (inside - mean[ids])
    sigma = rng.uniform(*blur)
    if sigma > 0.1:
        smooth = ndimage.gaussian_filter(out, sigma)
        weight = ndimage.gaussian_filter(body.astype(x.dtype), sigma)  # air's zeros do not darken the body's edge
        out[body] = smooth[body] / np.maximum(weight[body], 1e-3)
    return out


class TissueContrastTransform(AbstractTransform):
    """Per sample, with probability ``p_per_sample``: each channel replaced by :func:`tissue_contrast`
    of it and the patch's labels, with a number of intensity clusters in ``clusters`` (inclusive)."""

    def __init__(self, p_per_sample: float = 0.3, clusters: tuple[int, int] = (3, 6), data_key: str = "data",
                 label_key: str = "seg"):
        self.p_per_sample, self.clusters = p_per_sample, clusters
        self.data_key, self.label_key = data_key, label_key

    def __call__(self, **data_dict):
        data, seg = data_dict[self.data_key], data_dict[self.label_key]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            rng = np.random.default_rng(np.random.randint(2**31))
            for c in range(data.shape[1]):
                if np.count_nonzero(_body(data[b, c])) >= MIN_BODY_VOXELS:
                    clusters = int(rng.integers(self.clusters[0], self.clusters[1] + 1))
                    data[b, c] = tissue_contrast(data[b, c], seg[b, 0], clusters, rng)
        return data_dict


class FieldOfViewTransform(AbstractTransform):
    """Per sample, with probability ``p_per_sample``: the patch as a scan whose field of view ends at
    a random plane across one axis (the first, superior-inferior in the canonical orientation, with
    probability ``p_first_axis``; else another), keeping a share in ``kept`` of the patch on one side:
    image and labels beyond the plane become 0, as the sliding window pads a scan beyond its last slice."""

    def __init__(self, p_per_sample: float = 0.2, p_first_axis: float = 0.6, kept: tuple[float, float] = (0.3, 0.85),
                 data_key: str = "data", label_key: str = "seg"):
        self.p_per_sample, self.p_first_axis, self.kept = p_per_sample, p_first_axis, kept
        self.data_key, self.label_key = data_key, label_key

    def __call__(self, **data_dict):
        data, seg = data_dict[self.data_key], data_dict[self.label_key]
        spatial = data.shape[2:]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            axis = 0 if np.random.uniform() < self.p_first_axis else int(np.random.randint(1, len(spatial)))
            keep = int(round(np.random.uniform(*self.kept) * spatial[axis]))
            beyond = [b, slice(None)] + [slice(None)] * len(spatial)
            beyond[2 + axis] = slice(keep, None) if np.random.uniform() < 0.5 else slice(0, spatial[axis] - keep)
            data[tuple(beyond)] = 0
            seg[tuple(beyond)] = 0
        return data_dict
