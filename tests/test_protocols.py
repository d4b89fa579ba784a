"""The augmentation that shows the network other protocols (kneeseg/training/protocols.py): each
transform does what its name says to a patch, keeps the air at 0 and is reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kneeseg.training.protocols import (
    DARK_SHARE,
    ContrastTransferTransform,
    FieldOfViewTransform,
    TissueContrastTransform,
    random_transfer,
    tissue_contrast,
)


def _patch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored-looking (1, 1, 24, 24, 24) patch: air (0) on one side, a 'bone' of two tissues."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 1.0, (24, 24, 24)).astype(np.float32)
    image[:, :, :4] = 0.0
    labels = np.zeros(image.shape, np.float32)
    labels[6:18, 6:18, 8:20] = 1
    image[labels == 1] += 2.0
    return image[None, None].copy(), labels[None, None].copy()


@pytest.mark.parametrize("kind", ["monotonic", "inverted", "non-monotonic"])
def test_a_transfer_function_keeps_the_scale_and_orders_intensities_as_its_kind_says(kind):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 5000).astype(np.float32)
    low, high = np.quantile(x, [0.01, 0.99])
    for seed in range(20):
        y = random_transfer(x, kind, 5, np.random.default_rng(seed), dark_voids=False)
        assert y.dtype == x.dtype and y.min() >= low - 1e-5 and y.max() <= high + 1e-5
        rho = stats.spearmanr(x, y).statistic
        if kind == "monotonic":
            assert rho > 0.99 and np.all(np.diff(y[np.argsort(x)]) >= -1e-6)
        elif kind == "inverted":
            assert rho < -0.99 and np.all(np.diff(y[np.argsort(x)]) <= 1e-6)
    curves = [random_transfer(x, "non-monotonic", 6, np.random.default_rng(s), dark_voids=False) for s in range(20)]
    if kind == "non-monotonic":  # some curves go up and down
        assert any(np.any(np.diff(c[np.argsort(x)]) > 1e-3) and np.any(np.diff(c[np.argsort(x)]) < -1e-3) for c in curves)


def test_signal_voids_stay_dark_under_an_inverted_contrast():
    x = np.linspace(-1, 3, 10001).astype(np.float32)
    low, high = np.quantile(x, [0.01, 0.99])
    for seed in range(20):
        y = random_transfer(x, "inverted", 5, np.random.default_rng(seed), dark_voids=True)
        assert y[0] <= low + DARK_SHARE * (high - low) + 1e-5  # the darkest voxel stays dark
        assert y[-1] < y[len(y) // 2] or y[-1] <= low + DARK_SHARE * (high - low)  # the brightest goes dark
    plain = random_transfer(x, "inverted", 5, np.random.default_rng(0), dark_voids=False)
    assert plain[0] > plain[-1]  # a plain inversion makes the voids bright


def test_the_contrast_transform_keeps_the_air_and_is_reproducible_from_the_seed():
    image, labels = _patch()
    outputs = []
    for _ in range(2):
        np.random.seed(3)
        out = ContrastTransferTransform(p_per_sample=1.0)(data=image.copy(), seg=labels.copy())
        outputs.append(out["data"])
    assert np.array_equal(outputs[0], outputs[1])
    assert np.all(outputs[0][..., :4] == 0) and not np.allclose(outputs[0], image)
    np.random.seed(3)
    untouched = ContrastTransferTransform(p_per_sample=0.0)(data=image.copy(), seg=labels.copy())
    assert np.array_equal(untouched["data"], image)


def test_tissue_contrast_gives_each_tissue_its_own_intensity_and_keeps_the_labels():
    image, labels = _patch()
    x, lab = image[0, 0], labels[0, 0]
    flat = tissue_contrast(x, lab, 3, np.random.default_rng(0), texture=(0.0, 0.0), blur=(0.0, 0.0))
    assert np.all(flat[x == 0] == 0)
    body = x != 0
    edges = np.quantile(x[body], [1 / 3, 2 / 3])
    tissue = np.digitize(x, edges) + 3 * lab.astype(int)
    for t in np.unique(tissue[body]):  # without texture, every tissue is one grey value
        assert np.ptp(flat[body & (tissue == t)]) < 1e-5
    assert len(np.unique(np.round(flat[body], 5))) == len(np.unique(tissue[body]))
    textured = tissue_contrast(x, lab, 3, np.random.default_rng(0), texture=(1.0, 1.0), blur=(0.0, 0.0))
    inside = body & (tissue == tissue[12, 12, 12])  # a full share of texture: the deviations are the scan's own
    assert np.allclose(textured[inside] - textured[inside].mean(), x[inside] - x[inside].mean(), atol=1e-4)
    np.random.seed(0)
    out = TissueContrastTransform(p_per_sample=1.0)(data=image.copy(), seg=labels.copy())
    assert np.array_equal(out["seg"], labels) and np.all(out["data"][..., :4] == 0)


def test_a_field_of_view_ends_at_a_plane_with_image_and_labels_empty_beyond_it():
    image, labels = _patch()
    image[image == 0] = 0.5  # no air, so that what the transform empties shows
    took_bone = []
    for seed in range(10):
        np.random.seed(seed)
        out = FieldOfViewTransform(p_per_sample=1.0)(data=image.copy(), seg=labels.copy())
        empty = out["data"][0, 0] == 0
        assert np.all(out["seg"][0, 0][empty] == 0)
        took_bone.append(bool(np.any(labels[0, 0][empty])))
        axes = [a for a in range(3) if np.any(np.all(empty, axis=tuple(b for b in range(3) if b != a)))]
        assert len(axes) == 1  # one axis: whole slices across it are empty, from one end
        profile = np.all(empty, axis=tuple(b for b in range(3) if b != axes[0]))
        runs = np.flatnonzero(np.diff(profile.astype(int)))
        assert len(runs) == 1 and (profile[0] or profile[-1])
        kept = ~profile
        assert 0.3 * 24 - 1 <= kept.sum() <= 0.85 * 24 + 1
        index = [slice(None)] * 3
        index[axes[0]] = kept
        assert np.array_equal(out["data"][0, 0][tuple(index)], image[0, 0][tuple(index)])
    assert any(took_bone)  # and some cuts went through the bone, which lost its label there
