"""Predictor: a trained model applied to one scan, from raw arrays to labels on the scan's grid.

Preprocessing is the training one (crop, normalise, resample from the plan); each fold predicts by
sliding window (+ mirror TTA); the folds' softmax outputs are averaged; probabilities are mapped
back to the original grid and arg-maxed. With test-time scales the scan is also predicted on grids
finer or coarser than the plan's (each a multiple of its spacing), and those probabilities are
averaged on the original grid before the argmax.

A scan the model is unsure of (kneeseg.inference.qc) is read a second time with its contrast inverted
(the normalised intensities negated inside the body; the air, zero, stays dark): the one MR contrast
change a network cannot learn from one training scan's augmentation on a CPU budget (bright fat and
dark fluid against dark fat and bright fluid; benchmarks/RESULTS.md) becomes one test-time reading.
The inverted reading is kept only where the model is sure of it and at least twice as sure as of
the scan as recorded, and the prediction says so.

A model with a second reader (``TrainedModel.second_reader``; the built-in model's is its
any-contrast model, kneeseg.models) hands it a scan it stays unsure of (the reading it keeps, as
recorded or inverted, more than UNCERTAIN_LIMIT unsure): the second reader reads the scan as
recorded and inverted (where its plan normalises inside the body), keeps the reading it is surer
of, and, where both models preprocess alike (one channel, normalised inside the body) and
predict at one scale, teaches the model the scan's contrast (kneeseg.inference.contrast): the mean
of the second reader's probabilities and the model's through the learnt contrast is returned where
it is about as sure as the second reader's (else the second reader's alone), and says so. Its
confidence is weighed against its other reading's and the mean's, never the first model's: a
model trained on many contrasts may be less sure of everything (half B under a non-monotonic
contrast, seed 1: a half-A model of the lighter dose, ProtocolsLight, unsure of 50 % and right,
all-bone Dice 0.81; the half-A default unsure of 42 % and wrong, 0.06), and it is asked only where
the first model is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from kneeseg.errors import KneesegError
from kneeseg.hardware import precision_name, usable_autocast, use_cores
from kneeseg.inference.contrast import MAX_UNSURE_RISE, MIN_BODY_VOXELS, apply_curve, fit_contrast_curve
from kneeseg.inference.model import TrainedModel
from kneeseg.inference.qc import UNCERTAIN_LIMIT, uncertain_share
from kneeseg.inference.sliding_window import mirror_combinations, predict_sliding_window, window_count
from kneeseg.inference.timing import StageClock, timed
from kneeseg.io import Geometry
from kneeseg.planning.estimate import count_network
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
    # Read with its contrast inverted (the model sure of that reading and not of the scan as recorded),
    # and the share it was unsure of as recorded (None where it found no bone that way)
    read_inverted: bool = False
    unsure_as_recorded: float | None = None
    # Read by the model's second reader, the first model having been unsure of this share of the bone it
    # found, as recorded and inverted (None where it found none)
    second_reading: bool = False
    unsure_first_reading: float | None = None
    # The second reader taught the model the scan's contrast, and the two readings were averaged
    # (kneeseg.inference.contrast)
    contrast_taught: bool = False
    # A reader of the surer polarity (the second reader) kept its reading of the scan with its contrast
    # inverted (at one test-time scale at least)
    surer_inverted: bool = False


class Predictor:
    def __init__(self, model: TrainedModel, device: str = "cpu", tta: bool = True, step: float = 0.5,
                 autocast: str | None = None, progress: bool = False, scales: Sequence[float] = (1.0,),
                 inverted_retry: bool = True, second_reading: bool = True, teach_contrast: bool = True,
                 surer_polarity: bool = False):
        if not 0.0 < step <= 1.0:
            raise KneesegError(f"sliding-window step {step}: must be a fraction of the patch, more than 0 and at most 1")
        self.model, self.device, self.step, self.progress = model, torch.device(device), step, progress
        self.teach_contrast = teach_contrast
        self.config = model.config
        self.scales = checked_scales(scales)
        self.label_values = sorted(model.ds.labels.values())
        self.mirror_axes = list(self.config.training.mirror_axes) if tta else []
        # Predict in the precision the model was trained in, where this machine runs it natively; on a
        # CPU that runs bf16 natively (AVX-512 BF16, AMX), in bf16 also for a model trained in fp32: the
        # built-in model's full-scan pass 10.8 s -> 4.7 s, 0.02 % of its bone voxels another class,
        # all-bone Dice 0.98421 -> 0.98420 (benchmarks/RESULTS.md). Elsewhere bf16 is emulated: fp32.
        cpu = self.device.type == "cpu"
        self.autocast = usable_autocast(autocast or ("bf16" if cpu else self.config.training.autocast), device)
        self.threads = use_cores() if cpu else torch.get_num_threads()
        self.networks = model.load_networks(self.device)
        # Inverting needs air that stays zero (normalised inside the nonzero mask): elsewhere air would turn bright
        self.inverted_retry = inverted_retry and all(self.config.use_mask_for_norm)
        # Every reading of the scan as recorded and inverted, the one it is surer of kept (_fold_mean)
        self.surer_polarity = surer_polarity
        # The second reader learnt inverted contrasts among the others, and reads a scan both ways, keeping
        # the way it is surer of. Half B under ten contrasts its first model could not read, half-A models
        # (benchmarks/RESULTS.md): surer inverted on three, whose labels gained 0.013-0.048 all-bone Dice;
        # as recorded on seven, unchanged. The mean of both ways (with a check on the taught reading)
        # instead lost up to 0.044 on four of the ten, and half the patella of a non-monotonic knee.
        second = model.second_reader if second_reading else None
        self.second_reader = None if second is None else Predictor(
            second, device, tta, step, autocast, progress, scales, inverted_retry=False, second_reading=False,
            surer_polarity=True)

    def describe(self) -> str:
        """What this predictor runs on, for the first line of a prediction's log."""
        return (f"{self.device} ({self.threads} CPU threads), {precision_name(self.autocast)}, {len(self.networks)} fold(s), "
                f"mirroring {self.mirror_axes or 'off'}, scales {self.scales}"
                + (f", second reader {self.second_reader.model.folder.name}" if self.second_reader else ""))

    def predict(self, images: list[np.ndarray], geometry: Geometry, keep_probabilities: bool = False,
                clock: StageClock | None = None) -> Prediction:
        """Labels (and with ``keep_probabilities`` the probabilities) on the scan's grid; ``clock``:
        where the time went (preprocess, network, to the scan's grid)."""
        if len(images) != self.model.ds.num_channels:
            raise KneesegError(f"model expects {self.model.ds.num_channels} channel(s), got {len(images)}")
        probs, properties, surer_inverted = self._probabilities(images, geometry, False, clock)
        share = uncertain_share(probs)  # on the grid the network saw: the mean of folds, mirrors and scales
        as_recorded = share
        read_inverted = False
        if self.inverted_retry and (share is None or share > UNCERTAIN_LIMIT):
            probs_inverted, properties_inverted, _ = self._probabilities(images, geometry, True, clock)
            share_inverted = uncertain_share(probs_inverted)
            # Only a reading the model is sure of, and surer than of the scan as recorded by half at least:
            # noise, or a contrast it cannot read either way, is about as unsure both ways.
            if share_inverted is not None and share_inverted <= min(UNCERTAIN_LIMIT, (share or 1.0) / 2):
                read_inverted, share = True, share_inverted
                probs, properties = probs_inverted, properties_inverted
            del probs_inverted
        if self.second_reader is not None and (share is None or share > UNCERTAIN_LIMIT):
            del probs
            if self.can_be_taught():
                return self._taught_reading(images, geometry, keep_probabilities, clock, share)
            second = self.second_reader.predict(images, geometry, keep_probabilities, clock)
            return replace(second, second_reading=True, unsure_first_reading=share)
        with timed(clock, "to the scan's grid"):
            labels, full = restore_original(probs, properties, self.label_values, keep_probabilities)
        return Prediction(labels, full, share, read_inverted, as_recorded if read_inverted else None,
                          surer_inverted=surer_inverted)

    def can_be_taught(self) -> bool:
        """Whether the second reader can teach this model a scan's contrast (kneeseg.inference.contrast):
        both preprocess a scan alike (the built-in model and its second reader do), at one scale, one
        channel normalised inside the body (the air 0: the curve maps the body's intensities only)."""
        return (self.teach_contrast and self.second_reader is not None and self.scales == [1.0]
                and self.model.ds.num_channels == 1 and all(self.config.use_mask_for_norm)
                and self.second_reader.config.preprocessing_signature() == self.config.preprocessing_signature())

    def _taught_reading(self, images: list[np.ndarray], geometry: Geometry, keep_probabilities: bool,
                        clock: StageClock | None, unsure_first: float | None) -> Prediction:
        """The second reader's reading, averaged with this model's through the contrast curve the
        second reader's labels taught it (fitted through the first fold's network; read by every
        fold's). Where the scan is all air, the second reader found no bone, or the mean is far less
        sure than the second reader's reading (kneeseg.inference.contrast.MAX_UNSURE_RISE), the
        second reader's reading alone."""
        assert self.second_reader is not None
        with timed(clock, "preprocess"):
            case = preprocess_case(images, geometry, self.config)
        probs, surer_inverted = self.second_reader._fold_mean(case.data, clock=clock)  # leaves the data as it is
        teacher = probs.argmax(0).astype(np.uint8)
        share = uncertain_share(probs)
        taught = bool(np.count_nonzero(case.data[0]) >= MIN_BODY_VOXELS and teacher.any())
        if taught:
            with timed(clock, "contrast"):
                curve = fit_contrast_curve(self.networks[0], case.data, teacher, self.config.patch_size,
                                           self.device, self.autocast, progress=self.progress)
                data = apply_curve(case.data, curve)
            mean, _ = self._fold_mean(data, clock=clock)
            del data
            mean += probs
            mean /= 2
            together = uncertain_share(mean)
            taught = share is not None and together is not None and together <= share + MAX_UNSURE_RISE
            if taught:
                probs, share = mean, together
            del mean
        with timed(clock, "to the scan's grid"):
            labels, full = restore_original(probs, case.properties, self.label_values, keep_probabilities)
        return Prediction(labels, full, share, second_reading=True, unsure_first_reading=unsure_first,
                          contrast_taught=taught, surer_inverted=surer_inverted)

    def _probabilities(self, images: list[np.ndarray], geometry: Geometry, inverted: bool,
                       clock: StageClock | None) -> tuple[np.ndarray, dict, bool]:
        """The mean probabilities of folds, mirrors and scales on the plan's grid (one scale) or on the
        cropped original grid (several), the case's preprocessing record, and whether a reading with
        the contrast negated was kept (at one scale at least); ``inverted``: of the scan with its
        normalised contrast negated."""
        if self.scales == [1.0]:
            with timed(clock, "preprocess"):
                case = preprocess_case(images, geometry, self.config)  # converts to float32 after cropping
            probs, negated = self._fold_mean(case.data, inverted, clock)
            return probs, case.properties, negated
        any_negated = False
        on_crop = []  # the mean of the scales' probabilities on the cropped original grid (all scales share its crop)
        for factor in self.scales:
            config = replace(self.config, spacing=[s * factor for s in self.config.spacing])
            with timed(clock, "preprocess"):
                case = preprocess_case(images, geometry, config)
            probs, negated = self._fold_mean(case.data, inverted, clock)
            any_negated = any_negated or negated
            with timed(clock, "to the scan's grid"):
                on_crop.append(resample_channels(probs, case.properties["shape_after_crop"], case.properties["separate_z_axis"]))
            if len(on_crop) == 2:  # summed as they come: at most two float copies of the probabilities
                on_crop = [on_crop[0] + on_crop[1]]
        return on_crop[0] / len(self.scales), case.properties, any_negated

    def _fold_mean(self, data: np.ndarray, inverted: bool = False,
                   clock: StageClock | None = None) -> tuple[np.ndarray, bool]:
        """The folds' mean softmax (K, Z, Y, X) over preprocessed ``data`` (negated first if ``inverted``);
        for a reader of the surer polarity whose plan normalises inside the body (air 0), that over
        ``data`` as given or negated, whichever it is less unsure of (``data`` left as given). Also
        whether the softmax is of the data negated."""
        if inverted:
            data = np.negative(data, out=data)  # the preprocessed copy is ours; zeros (air) stay zero
        probs = self._folds(data, clock)
        if inverted or not (self.surer_polarity and all(self.config.use_mask_for_norm)):
            return probs, inverted
        np.negative(data, out=data)
        negated = self._folds(data, clock)
        np.negative(data, out=data)  # back as given: negation is exact
        share, share_negated = uncertain_share(probs), uncertain_share(negated)
        if share_negated is not None and (share is None or share_negated < share):
            return negated, True
        return probs, False

    def _folds(self, data: np.ndarray, clock: StageClock | None) -> np.ndarray:
        """The folds' mean softmax over ``data`` as it is."""
        total: np.ndarray | None = None
        with timed(clock, "network"):
            for net in self.networks:  # summed as they come: one more copy at a time
                probs = predict_sliding_window(net, data, self.config.patch_size, len(self.label_values), self.step,
                                               self.mirror_axes, self.device, self.autocast, self.progress)
                if total is None:
                    total = probs
                else:
                    total += probs
        if clock is not None:  # the work, counted as the planner counts it: forward FLOPs of one patch
            patch = self.config.patch_size
            flops = count_network(patch, self.config.network, self.model.ds.num_channels, len(self.label_values))[0]
            runs = window_count(list(data.shape[1:]), patch, self.step) * len(mirror_combinations(self.mirror_axes))
            clock.network_gflop += flops * runs * len(self.networks) / 1e9
            clock.network_precision = precision_name(self.autocast)
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
