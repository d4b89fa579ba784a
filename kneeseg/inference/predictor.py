"""Predictor: a trained model applied to one scan, from raw arrays to labels on the scan's grid.

Preprocessing is the training one (crop, normalise, resample from the plan); each fold predicts by
sliding window (+ mirror TTA); the folds' softmax outputs are averaged; probabilities are mapped
back to the original grid and arg-maxed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kneeseg.errors import KneesegError
from kneeseg.hardware import usable_autocast
from kneeseg.inference.model import TrainedModel
from kneeseg.inference.sliding_window import predict_sliding_window
from kneeseg.io import Geometry
from kneeseg.preprocessing.preprocess import preprocess_case
from kneeseg.preprocessing.restore import restore_original
from kneeseg.training.checkpoint import load_checkpoint
from kneeseg.training.network import UNet


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 (z, y, x) on the input grid
    probabilities: np.ndarray | None  # float32 (K, z, y, x) on the input grid, if asked


class Predictor:
    def __init__(self, model: TrainedModel, device: str = "cpu", tta: bool = True, step: float = 0.5,
                 autocast: str | None = None, progress: bool = False):
        self.model, self.device, self.step, self.progress = model, torch.device(device), step, progress
        self.config = model.config
        self.label_values = sorted(model.ds.labels.values())
        self.mirror_axes = list(self.config.training.mirror_axes) if tta else []
        # Predict in the precision the model was trained in, where this machine runs it natively.
        self.autocast = usable_autocast(autocast or self.config.training.autocast, device)
        self.networks = []
        for path in model.checkpoints:
            state = load_checkpoint(path)
            if state.get("signature") != self.config.preprocessing_signature():
                raise KneesegError(f"{path}: trained with other plans than {model.folder / 'plans.json'}")
            net = UNet(self.config.network, model.ds.num_channels, len(self.label_values))
            net.load_state_dict(state["network"])
            self.networks.append(net.to(self.device).eval())

    def predict(self, images: list[np.ndarray], geometry: Geometry, keep_probabilities: bool = False) -> Prediction:
        if len(images) != self.model.ds.num_channels:
            raise KneesegError(f"model expects {self.model.ds.num_channels} channel(s), got {len(images)}")
        case = preprocess_case(images, geometry, self.config)  # converts to float32 after cropping
        probs = None
        for net in self.networks:
            p = predict_sliding_window(net, case.data, self.config.patch_size, len(self.label_values), self.step,
                                       self.mirror_axes, self.device, self.autocast, self.progress)
            probs = p if probs is None else probs + p
        probs /= len(self.networks)
        labels, full = restore_original(probs, case.properties, self.label_values, keep_probabilities)
        return Prediction(labels, full)
