"""A contrast taught by the second reader (kneeseg/inference/contrast.py): the fitted curve takes a
scan to the contrast the network reads, monotonic or not, leaves the network as it was and is
reproducible from the seed; the QC says where the labels are both readings'."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneeseg.inference.contrast import apply_curve, fit_contrast_curve
from kneeseg.inference.qc import prediction_warnings
from kneeseg.io import Geometry

PATCH = [8, 12, 12]


class BrightIsBone(torch.nn.Module):
    """A 'network' that calls a voxel bone (class 1) the brighter it is: it reads one contrast only."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-3.0, 3.0]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([1.0, -1.0]))

    def forward(self, x):
        return self.conv(x)


def _scan(bone: float, others: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A (1, 16, 24, 24) z-scored-looking scan: air (0) on one side, a block of bone at intensity
    ``bone`` among tissues at ``others``, a little noise; and the bone's labels (the teacher's)."""
    rng = np.random.default_rng(0)
    image = np.empty((16, 24, 24), np.float32)
    for i, value in enumerate(others):
        image[:, :, i * 24 // len(others):(i + 1) * 24 // len(others)] = value
    labels = np.zeros(image.shape, np.int64)
    labels[4:12, 6:18, 6:18] = 1
    image[labels == 1] = bone
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    image[:, :3] = 0.0  # air the scanner stored as zeros
    return image[None], labels


def _agreement(network: torch.nn.Module, data: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        found = network(torch.from_numpy(data[None])).argmax(1)[0].numpy()
    body = data[0] != 0
    return float(np.mean(found[body] == labels[body]))


@pytest.mark.parametrize("bone, others", [
    (-1.5, (0.5, 1.5)),         # the bone the darkest tissue: an inverted contrast
    (0.3, (-1.5, 1.5)),         # the bone between two tissues: a non-monotonic one
])
def test_the_fitted_curve_shows_the_network_the_teachers_bones(bone, others):
    network = BrightIsBone().eval()
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    data, teacher = _scan(bone, others)
    assert _agreement(network, data, teacher) < 0.7  # the scan as recorded: the network is lost
    curve = fit_contrast_curve(network, data, teacher, PATCH, torch.device("cpu"), seed=3)
    mapped = apply_curve(data, curve)
    assert _agreement(network, mapped, teacher) > 0.98
    assert np.all(mapped[data == 0] == 0) and np.all(mapped[data != 0] != 0)  # the air stays air
    body = mapped[data != 0]
    assert abs(body.mean()) < 1e-4 and abs(body.std() - 1) < 1e-3  # z-scored again, as the plans normalise
    # The network is data: neither changed nor given gradients.
    assert all(torch.equal(weights[k], v) for k, v in network.state_dict().items())
    assert all(p.grad is None for p in network.parameters())
    again = fit_contrast_curve(network, data, teacher, PATCH, torch.device("cpu"), seed=3)
    np.testing.assert_array_equal(again.values, curve.values)
    assert again.start == curve.start and again.loss == curve.loss


def test_the_qc_says_the_labels_are_both_readings():
    geometry = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    plain, taught = (prediction_warnings(labels, geometry, {"femur": 1}, {}, unsure=0.5, second_reading=True,
                                         unsure_first_reading=0.44, contrast_taught=t) for t in (False, True))
    assert plain[0] == "read by the model's second reader: the model was unsure of 44 % of the bone it found; check every bone"
    assert taught[0] == ("read by the model's second reader, which taught it the scan's contrast (the labels are both "
                         "readings'): the model was unsure of 44 % of the bone it found; check every bone")
    assert plain[1].startswith("the second reader is unsure of 50 % of the bone it found (more than 35 %): it may not")
    assert taught[1].startswith("the two readings are unsure of 50 % of the bone they found (more than 35 %): they may not")
    inverted = prediction_warnings(labels, geometry, {"femur": 1}, {}, unsure=0.2, second_reading=True,
                                   unsure_first_reading=0.44, contrast_taught=True, second_inverted=True)
    assert inverted[0].startswith("read by the model's second reader with the scan's contrast inverted, which taught it")


def test_the_cli_passes_no_taught_contrast_on(monkeypatch, tmp_path):
    import kneeseg.cli.predict as cli

    asked = []
    monkeypatch.setattr(cli, "predict", lambda *args, options, **kwargs: asked.append(options.teach_contrast) or [])
    for flags in ([], ["--no-taught-contrast"]):
        assert cli.main(["-i", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), *flags]) == 0
    assert asked == [True, False]
