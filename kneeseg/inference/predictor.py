"""Predictor: a trained model applied to one scan, from raw arrays to labels on the scan's grid.

Preprocessing is the training one (crop, normalise, resample from the plan); each fold predicts by
sliding window (+ mirror TTA); the folds' softmax outputs are averaged; probabilities are mapped
back to the original grid and arg-maxed. With test-time scales the scan is also predicted on grids
finer or coarser than the plan's (each a multiple of its spacing), and those probabilities are
averaged on the original grid before the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from kneeseg.errors import KneesegError
from kneeseg.hardware import precision_name, usable_autocast, use_cores
from kneeseg.inference.model import TrainedModel
from kneeseg.inference.qc import uncertain_share
from kneeseg.inference.sliding_window import predict_sliding_window
from kneeseg.io import Geometry
from kneeseg.preprocessing.preprocess import preprocess_case
from kneeseg.preprocessing.resampling import resample_channels
from kneeseg.preprocessing.restore import restore_original
from kneeseg.training.ranges import SCALE


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 (z, y, x) on the input grid
    probabilities: np.ndarray | None  # float32 (K, z, y, x) on the input grid, if asked
    # Share of the voxels found as bone whose winning probability is under CONFIDENT (kneeseg.inference.qc);
    # None where no bone was found
    uncertain_share: float | None = None


class Predictor:
    def __init__(self, model: TrainedModel, device: str = "cpu", tta: bool = True, step: float = 0.5,
                 autocast: str | None = None, progress: bool = False, scales: Sequence[float] = (1.0,)):
        if not 0.0 < step <= 1.0:
            raise KneesegError(f"sliding-window step {step}: must be a fraction of the patch, more than 0 and at most 1")
        self.model, self.device, self.step, self.progress = model, torch.device(device), step, progress
        self.config = model.config
        self.scales = checked_scales(scales)
        self.label_values = sorted(model.ds.labels.values())
        self.mirror_axes = list(self.config.training.mirror_axes) if tta else []
        # Predict in the precision the model was trained in, where this machine runs it natively.
        self.autocast = usable_autocast(autocast or self.config.training.autocast, device)
        self.threads = use_cores() if self.device.type == "cpu" else torch.get_num_threads()
        self.networks = model.load_networks(self.device)

    def describe(self) -> str:
        """What this predictor runs on, for the first line of a prediction's log."""
        return (f"{self.device} ({self.threads} CPU threads), {precision_name(self.autocast)}, {len(self.networks)} fold(s), "
                f"mirroring {self.mirror_axes or 'off'}, scales {self.scales}")

    def predict(self, images: list[np.ndarray], geometry: Geometry, keep_probabilities: bool = False) -> Prediction:
        if len(images) != self.model.ds.num_channels:
            raise KneesegError(f"model expects {self.model.ds.num_channels} channel(s), got {len(images)}")
        if self.scales == [1.0]:
            case = preprocess_case(images, geometry, self.config)  # converts to float32 after cropping
            probs = self._fold_mean(case.data)
        else:  # mean of the scales' probabilities on the cropped original grid (all scales share its crop)
            on_crop = []
            for factor in self.scales:
                config = replace(self.config, spacing=[s * factor for s in self.config.spacing])
                case = preprocess_case(images, geometry, config)
                on_crop.append(resample_channels(self._fold_mean(case.data), case.properties["shape_after_crop"],
                                                 case.properties["separate_z_axis"]))
                if len(on_crop) == 2:  # summed as they come: at most two float copies of the probabilities
                    on_crop = [on_crop[0] + on_crop[1]]
            probs = on_crop[0] / len(self.scales)
        share = uncertain_share(probs)  # on the grid the network saw: the mean of folds, mirrors and scales
        labels, full = restore_original(probs, case.properties, self.label_values, keep_probabilities)
        return Prediction(labels, full, share)

    def _fold_mean(self, data: np.ndarray) -> np.ndarray:
        """The folds' mean softmax (K, Z, Y, X) over preprocessed ``data``."""
        total: np.ndarray | None = None
        for net in self.networks:  # summed as they come: one more copy at a time
            probs = predict_sliding_window(net, data, self.config.patch_size, len(self.label_values), self.step,
                                           self.mirror_axes, self.device, self.autocast, self.progress)
            if total is None:
                total = probs
            else:
                total += probs
        assert total is not None  # load_networks gives at least one
        return total / len(self.networks)


def checked_scales(scales: Sequence[float]) -> list[float]:
    """Test-time scales (multiples of the plan's spacing), sorted, each once. Only sizes the training's
    scale augmentation showed the network: outside it, bones look larger or smaller than any it learnt."""
    checked = sorted({float(f) for f in scales})
    lo, hi = SCALE
    bad = [f for f in checked if not lo <= f <= hi]
    if not checked or bad:
        raise KneesegError(f"test-time scales must lie in {lo}-{hi} (the training's scale augmentation), got {list(scales)}")
    return checked
