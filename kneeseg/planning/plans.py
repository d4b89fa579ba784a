"""Plans: plain dataclasses that round-trip to readable JSON.

All sizes and spacings are in array order (z, y, x). A plans file holds every configuration the
planner derived (GPU ``3d_fullres`` / ``3d_lowres`` and the CPU ``3d_cpu``) and says which one to
use on which device; the trainer and predictor take a :class:`ConfigurationPlan` and never
recompute what it decided.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io import atomic_write_json, read_json
from kneeseg.planning.machine import PROFILES, MachineProfile

PLANS_VERSION = 3  # 2: no soft_targets (label shares) in TrainingPlan; 3: hardware is a HardwareTarget with a machine profile


@dataclass
class NetworkPlan:
    """A U-Net: one entry per resolution stage (stage 0 = full patch resolution)."""

    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]  # stage 0 has stride 1
    n_conv_per_stage: int = 2
    n_conv_per_stage_decoder: int = 2
    deep_supervision: bool = True

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def patch_divisor(self) -> list[int]:
        """A patch must be a multiple of this along each axis to survive all the downsamplings."""
        div = [1, 1, 1]
        for s in self.strides:
            div = [d * k for d, k in zip(div, s)]
        return div


@dataclass
class ResamplingPlan:
    """How arrays move between the original and the target spacing.

    Images and probabilities: linear interpolation when upsampling, area averaging (antialiased)
    when downsampling. Labels: the same on one-hot channels, then argmax. ``separate_z_axis``
    (anisotropic data) resamples in-plane first and takes the nearest slice along that axis.
    """

    image: str = "linear"
    label: str = "linear_onehot"
    antialias: bool = True
    separate_z_axis: int | None = None


@dataclass
class TrainingPlan:
    num_epochs: int
    iterations_per_epoch: int
    val_iterations: int
    # "sgd": Nesterov SGD, nnU-Net's choice for long GPU schedules; "adamw": for the short CPU
    # schedules, where SGD with momentum 0.99 has not left its initial phase (benchmarks/optimizer_short_schedule.py).
    optimizer: str = "sgd"
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    oversample_foreground: float = 0.33
    autocast: str = "none"  # "none" | "bf16" | "fp16"
    # Mirroring (training augmentation and test-time augmentation) only along axes where a mirrored
    # knee is still a knee with the same labels: left-right for sided anatomy, all axes otherwise.
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    # The final weights are the mean of the weights after each of this last share of the epochs
    # (training/weight_average.py); 0 keeps the last epoch's weights, as nnU-Net does.
    average_last_fraction: float = 0.0


@dataclass
class HardwareTarget:
    """What the plans were made for: the machine (measured, or a named profile) and the user's budgets."""

    machine: MachineProfile = field(default_factory=lambda: PROFILES["reference"])
    gpu_memory_gb: float = 8.0  # GPU memory the cuda configurations may use (nnU-Net's habit: 8, whatever the GPU)
    cpu_training_hours: float = 1.0  # the CPU training time 3d_cpu is sized for


@dataclass
class ComputeEstimate:
    """The planner's explicit estimate for one training iteration (see planning/estimate.py)."""

    activation_memory_gb: float
    parameters_millions: float
    gflops_per_iteration: float
    seconds_per_iteration: float  # on the planned device


@dataclass
class ConfigurationPlan:
    name: str
    device: str  # what it was sized for: "cpu" or "cuda"
    data_identifier: str  # preprocessed folder name; configurations with equal preprocessing share it
    spacing: list[float]
    median_shape: list[int]  # median cropped case at this spacing
    patch_size: list[int]
    batch_size: int
    network: NetworkPlan
    normalization: list[str]  # per channel: "zscore"
    use_mask_for_norm: list[bool]
    resampling: ResamplingPlan
    training: TrainingPlan
    estimate: ComputeEstimate

    def preprocessing_signature(self) -> str:
        """Hash of everything that determines the preprocessed arrays (not the network or schedule)."""
        key = {
            "spacing": [round(s, 6) for s in self.spacing],
            "normalization": self.normalization,
            "use_mask_for_norm": self.use_mask_for_norm,
            "resampling": asdict(self.resampling),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plans:
    plans_name: str
    dataset_name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    original_median_spacing: list[float]
    original_median_shape: list[int]  # after crop to nonzero
    foreground_intensity: dict[str, dict[str, float]]
    hardware: HardwareTarget
    configurations: dict[str, ConfigurationPlan]
    recommended: dict[str, str]  # device -> configuration name
    notes: list[str] = field(default_factory=list)
    # [smallest, largest] volume of each label over the training cases (0 where a case lacks it):
    # what a prediction on an unseen scan is compared with (kneeseg.inference.qc)
    label_volumes_mm3: dict[str, list[float]] = field(default_factory=dict)
    version: int = PLANS_VERSION

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise KneesegError(
                f"plans '{self.plans_name}': no configuration '{name}' (available: {', '.join(self.configurations)})"
            )
        return self.configurations[name]

    def recommended_configuration(self, device: str) -> str:
        return self.recommended.get(device.split(":")[0], self.recommended["cuda"])

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["hardware"]["machine"]["busy"] is None:  # an idle machine's plans read as before the field existed
            del data["hardware"]["machine"]["busy"]
        return data

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Plans:
        return cls.from_data(read_json(path), str(path))

    @classmethod
    def from_data(cls, data, where: str) -> Plans:
        """Plans from parsed JSON; ``where`` names the source in errors (a model archive's plans are
        checked before anything is unpacked)."""
        version = data.get("version", PLANS_VERSION) if isinstance(data, dict) else PLANS_VERSION
        if version == 2:  # models trained before machines were measured keep working
            data = _from_version_2(data)
        elif version != PLANS_VERSION:
            raise KneesegError(f"{where}: plans version {version}, this kneeseg reads version {PLANS_VERSION}; "
                               "run kneeseg_plan_and_preprocess again")
        return from_dict(cls, data, where)


def _from_version_2(data: dict) -> dict:
    """Version 2 plans as version 3: their hardware section held the numbers the planner was told
    (threads, a fixed 50 GFLOP/s per thread, seconds per step); they had no label volumes (the QC
    then judges only the anatomical order)."""
    old: dict = data["hardware"] if isinstance(data.get("hardware"), dict) else {}
    threads = int(old.get("cpu_threads", 2))
    machine = {"name": "fixed (plans version 2)", "cpu_model": "unknown", "cpu_cores": threads,
               "cpu_precision": "bf16", "cpu_gflops": 50.0 * threads}
    hardware = {"machine": machine, "gpu_memory_gb": old.get("gpu_memory_gb", 8.0),
                "cpu_training_hours": old.get("cpu_training_hours", 1.0)}
    return {**data, "hardware": hardware, "version": PLANS_VERSION}


def from_dict(cls, data, where: str):
    """Build dataclass ``cls`` from JSON data, checking keys and recursing into nested plans."""
    if not isinstance(data, dict):
        raise KneesegError(f"{where}: expected an object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise KneesegError(f"{where}: unknown key(s) {sorted(unknown)} in {cls.__name__}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KneesegError(f"{where}: missing key '{name}' in {cls.__name__}")
            continue
        value, hint = data[name], hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, where)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            value = {k: from_dict(typing.get_args(hint)[1], v, where) for k, v in value.items()}
        kwargs[name] = value
    return cls(**kwargs)
