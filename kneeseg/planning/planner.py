"""The planner: fingerprint + hardware -> plans. Deterministic: the same inputs give the same plans.

Rules (all spacings/shapes in z, y, x):
- Full-resolution target spacing: the median spacing; for anisotropic data (max/min > 3) the
  coarse axis takes the 10th percentile of its spacings instead, never finer than the in-plane one.
- Patch: starts at the median body extent (its aspect ratio in mm; the bounding box of what is not
  air, the same whether the scanner stored the air as zeros or as noise), capped per axis, and shrinks
  the axis that covers most of the median case until the iteration fits the budget: GPU memory for
  ``cuda`` configurations, the compute of one step for ``3d_cpu`` (below).
- Topology: an axis is pooled (stride 2) while its feature map stays >= 2 * MIN_FEATURE_MAP and its
  spacing is within 2x of the finest axis; kernels are 1 along axes still more than 2x coarser.
- ``3d_lowres`` exists when the full-resolution patch covers less than LOWRES_TRIGGER of the median
  case.

``3d_cpu``, for a machine whose training step runs at ``G`` GFLOP/s (measured when planning,
kneeseg.training.throughput, or a named profile) and a budget of ``H`` hours: the budget must hold
the compute of CPU_MIN_ITERATIONS steps, so one step may cost ``G * 3600 * H / CPU_MIN_ITERATIONS``
GFLOPs (with validation and data loading, CPU_STEP_OVERHEAD, about 2400 steps: ~50 epochs of 50).
What gives way when it does not fit, in this order:
1. the patch, down to CPU_MIN_COVERAGE of the median case;
2. the spacing, coarsened (finest axes first) in steps of 1.1x up to CPU_MAX_SPACING_FACTOR x full
   resolution: knee bones are large and smooth, so the coarser grid costs little Dice and keeps the
   context;
3. the network's widths at the coarsest spacing, CPU_WIDTHS (base features 16, then 12, then 8; a
   step's compute goes with the square of the width);
4. then the coverage, and the budget holds fewer steps than the minimum.
Undertraining costs most: the same plan trained for 16 instead of ~52 epochs in the hour scored bone
Dice 0.84 instead of ~0.978 on the real scan. A faster machine keeps the widths and gets a finer
spacing. On the reference profile (planning/machine.py) the rule gives the plans of the fixed
budget it replaced. A ``cpu_spacing`` given by the user replaces the spacing search (nnU-Net's
overwrite_target_spacing); the patch and widths are still fitted to the machine. The number of
epochs fills the budget: steps of the estimated time, CPU_STEP_OVERHEAD more for the rest.
"""

from __future__ import annotations

import numpy as np

from kneeseg.dataset.layout import DatasetJson
from kneeseg.fingerprint import Fingerprint
from kneeseg.hardware import precision_name
from kneeseg.planning.estimate import estimate_iteration
from kneeseg.planning.plans import ConfigurationPlan, HardwareTarget, NetworkPlan, Plans, ResamplingPlan, TrainingPlan

ANISOTROPY_THRESHOLD = 3.0
MIN_FEATURE_MAP = 4
MAX_STAGES = 6
LOWRES_TRIGGER = 0.25
LOWRES_MAX_SPACING_FACTOR = 4.0
CPU_MIN_COVERAGE = 0.125
CPU_MAX_SPACING_FACTOR = 3.0
GPU_FEATURES = (32, 320)  # (base, cap)
CPU_FEATURES = (16, 256)
CPU_WIDTHS = (16, 12, 8)  # base features tried in turn; the cap stays 16x the base
# The reference machine (bf16, 250 GFLOP/s) trains ~52 epochs of 50 steps of ~275 GFLOPs in an hour,
# where the real scan scores ~0.978. 3000 steps of at most 300 GFLOPs fill its hour of steps;
# validation, batches and logging add a quarter to each step (1.1 s steps, 52 x 50 in 60 minutes).
CPU_MIN_ITERATIONS = 3000
CPU_STEP_OVERHEAD = 1.25
CPU_ITERATIONS_PER_EPOCH = 50
GPU_MAX_PATCH_EDGE = 256
CPU_MAX_PATCH_EDGE = 160
# A CPU budget ends while the weights still move; the mean over the last quarter of the epochs was
# never worse than the last epoch's on the real scan (benchmarks/RESULTS.md). GPU plans keep nnU-Net's.
CPU_AVERAGE_LAST_FRACTION = 0.25


LEFT_RIGHT_AXIS = 2  # arrays are in canonical orientation: axis 2 runs along the patient's left-right


def mirror_axes(ds: DatasetJson) -> list[int]:
    """Knee bones are anatomical labels (the femur is above the tibia, the patella in front): a knee
    mirrored left-right is another knee, one mirrored top-bottom is not. A knee dataset names a femur or
    a tibia, in any case ("Femur", "TIBIA"); other datasets: all axes."""
    if {"femur", "tibia"} & {name.lower() for name in ds.labels}:
        return [LEFT_RIGHT_AXIS]
    return [0, 1, 2]


def fullres_spacing(spacings: np.ndarray) -> list[float]:
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    if target[worst] / target[others].max() > ANISOTROPY_THRESHOLD:
        tenth = np.percentile(spacings[:, worst], 10)
        target[worst] = max(tenth, target[others].max() + 1e-5)
    return [float(round(s, 6)) for s in target]


def plan_topology(spacing: list[float], patch: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Strides and kernel sizes per stage for a patch at a spacing."""
    sp, shape = np.asarray(spacing, float), np.asarray(patch, float)
    kernel = lambda s: [3 if s[a] <= 2 * s.min() else 1 for a in range(3)]  # noqa: E731
    strides, kernels = [[1, 1, 1]], [kernel(sp)]
    while len(strides) < MAX_STAGES:
        stride = [2 if shape[a] >= 2 * MIN_FEATURE_MAP and sp[a] <= 2 * sp.min() else 1 for a in range(3)]
        if 2 not in stride:
            break
        shape, sp = shape / stride, sp * stride
        strides.append(stride)
        kernels.append(kernel(sp))
    return strides, kernels


def build_network(spacing: list[float], patch: list[int], features: tuple[int, int]) -> NetworkPlan:
    strides, kernels = plan_topology(spacing, patch)
    base, cap = features
    return NetworkPlan(
        features_per_stage=[min(base * 2**s, cap) for s in range(len(strides))],
        kernel_sizes=kernels,
        strides=strides,
    )


def _round_to(patch: np.ndarray, divisor: list[int]) -> list[int]:
    return [int(max(d, round(p / d) * d)) for p, d in zip(patch, divisor)]


def fit_patch(spacing, median_shape, features, fits, max_edge):
    """Largest patch (following the median case) whose network passes ``fits(patch, network)``."""
    median = np.asarray(median_shape, float)
    patch = np.minimum(median, max_edge)
    while True:
        network = build_network(spacing, _round_to(patch, [1, 1, 1]), features)
        rounded = _round_to(patch, network.patch_divisor)
        network = build_network(spacing, rounded, features)
        rounded = _round_to(np.asarray(rounded, float), network.patch_divisor)
        if fits(rounded, network) or np.all(patch <= 2 * MIN_FEATURE_MAP):
            return rounded, network
        ratio = patch / median + 1e-6 * patch * np.asarray(spacing)  # tie-break: longest in mm
        axis = int(np.argmax(np.where(patch > 2 * MIN_FEATURE_MAP, ratio, -1)))
        patch[axis] = max(2 * MIN_FEATURE_MAP, patch[axis] - max(4, network.patch_divisor[axis] // 2))


def _coverage(patch, median_shape) -> float:
    return float(np.prod(np.minimum(patch, median_shape)) / np.prod(median_shape))


def _coarsen(spacing: list[float], factor: float) -> list[float]:
    """Coarsen the finest axes first: each axis becomes max(own spacing, factor * finest spacing)."""
    finest = min(spacing)
    return [float(round(max(s, factor * finest), 6)) for s in spacing]


def dataset_facts(fingerprint: Fingerprint, ds: DatasetJson, plans_name: str) -> dict:
    """The fields of a dataset's plans that describe its data (names, channels, labels, median spacing
    and shape, intensities), whatever configuration they hold."""
    return dict(
        plans_name=plans_name,
        dataset_name=fingerprint.dataset_name,
        channel_names=dict(ds.channel_names),
        labels=dict(ds.labels),
        original_median_spacing=[float(v) for v in np.median(fingerprint.spacings, axis=0)],
        original_median_shape=[int(v) for v in np.median(fingerprint.shapes_after_crop, axis=0)],
        foreground_intensity={k: vars(v) for k, v in fingerprint.foreground_intensity.items()},
    )


def plan_experiment(
    fingerprint: Fingerprint, ds: DatasetJson, hardware: HardwareTarget | None = None, plans_name: str = "kneesegPlans",
    cpu_spacing: list[float] | None = None,
) -> Plans:
    hardware = hardware or HardwareTarget()
    machine = hardware.machine
    in_ch, n_cls = ds.num_channels, len(ds.labels)
    spacings = fingerprint.spacings
    shapes_mm = fingerprint.shapes_after_crop * spacings  # what the preprocessed data holds
    median_mm = np.median(fingerprint.body_shapes * spacings, axis=0)  # what a patch must cover
    full_spacing = fullres_spacing(spacings)
    use_mask = fingerprint.median_relative_size_after_crop < 0.75  # nnU-Net: crop removed >= 25 %
    separate_z = None
    if max(full_spacing) / min(full_spacing) > ANISOTROPY_THRESHOLD:
        separate_z = int(np.argmax(full_spacing))
    total_mm3 = float(np.sum(np.prod(shapes_mm, axis=1)))
    mirror = mirror_axes(ds)
    budget_s = hardware.cpu_training_hours * 3600
    cpu_step_gflop = machine.cpu_gflops * budget_s / CPU_MIN_ITERATIONS

    def median_at(spacing):
        return [int(round(m / s)) for m, s in zip(median_mm, spacing)]

    def gpu_fits(patch, network, batch=2):
        est = estimate_iteration(patch, batch, network, in_ch, n_cls, "cuda", autocast=True)
        return est.activation_memory_gb <= hardware.gpu_memory_gb

    def cpu_fits(patch, network):
        est = estimate_iteration(patch, 2, network, in_ch, n_cls, "cpu", machine.cpu_gflops)
        return est.gflops_per_iteration <= cpu_step_gflop

    def configuration(name, device, spacing, features=CPU_FEATURES):
        median = median_at(spacing)
        batch = 2
        if device == "cuda":
            patch, network = fit_patch(spacing, median, GPU_FEATURES, gpu_fits, GPU_MAX_PATCH_EDGE)
            # Bigger batches while memory allows and a batch stays under 5 % of the dataset's voxels.
            while gpu_fits(patch, network, batch + 1) and (batch + 1) * np.prod(np.asarray(patch) * spacing) <= 0.05 * total_mm3:
                batch += 1
            training = TrainingPlan(num_epochs=1000, iterations_per_epoch=250, val_iterations=50, autocast="bf16", mirror_axes=mirror)
            est = estimate_iteration(patch, batch, network, in_ch, n_cls, device, autocast=True)
        else:
            patch, network = fit_patch(spacing, median, features, cpu_fits, CPU_MAX_PATCH_EDGE)
            est = estimate_iteration(patch, batch, network, in_ch, n_cls, device, machine.cpu_gflops)
            iters = CPU_ITERATIONS_PER_EPOCH
            epochs = int(max(5, round(budget_s / (iters * est.seconds_per_iteration * CPU_STEP_OVERHEAD))))
            # The precision the machine measured faster (bf16 autocast: same Dice as fp32 on the phantom,
            # ~2.5x faster steps where the CPU has native bf16; benchmarks/RESULTS.md).
            training = TrainingPlan(num_epochs=epochs, iterations_per_epoch=iters, val_iterations=10, mirror_axes=mirror,
                                    optimizer="adamw", initial_lr=1e-3, weight_decay=1e-4, autocast=machine.cpu_precision,
                                    average_last_fraction=CPU_AVERAGE_LAST_FRACTION)
        return ConfigurationPlan(
            name=name,
            device=device,
            data_identifier=f"{plans_name}_" + "x".join(f"{s:.3f}" for s in spacing) + "mm",
            spacing=spacing,
            median_shape=median,
            patch_size=patch,
            batch_size=batch,
            network=network,
            normalization=["zscore"] * in_ch,
            use_mask_for_norm=[bool(use_mask)] * in_ch,
            resampling=ResamplingPlan(separate_z_axis=separate_z),
            training=training,
            estimate=est,
        )

    def covers(config) -> bool:
        return _coverage(config.patch_size, config.median_shape) >= CPU_MIN_COVERAGE

    configurations = {"3d_fullres": configuration("3d_fullres", "cuda", full_spacing)}
    notes = []
    full = configurations["3d_fullres"]
    if _coverage(full.patch_size, full.median_shape) < LOWRES_TRIGGER:
        factor, lowres = 1.0, None
        while factor < LOWRES_MAX_SPACING_FACTOR:
            factor *= 1.1
            lowres = configuration("3d_lowres", "cuda", _coarsen(full_spacing, factor))
            if _coverage(lowres.patch_size, lowres.median_shape) >= 2 * LOWRES_TRIGGER:
                break
        configurations["3d_lowres"] = lowres
        notes.append(f"3d_lowres: full-resolution patch covers {_coverage(full.patch_size, full.median_shape):.1%} of the median case")

    chosen = "set by the user, " if cpu_spacing is not None else ""
    if cpu_spacing is not None:
        cpu = configuration("3d_cpu", "cpu", [float(round(s, 6)) for s in cpu_spacing])
    else:  # (1) the patch, then (2) the spacing
        factor = 1.0
        cpu = configuration("3d_cpu", "cpu", full_spacing)
        while not covers(cpu) and factor < CPU_MAX_SPACING_FACTOR:
            factor = min(CPU_MAX_SPACING_FACTOR, factor * 1.1)
            cpu = configuration("3d_cpu", "cpu", _coarsen(full_spacing, factor))
    for base in CPU_WIDTHS[1:]:  # (3) narrower networks at that spacing
        if covers(cpu):
            break
        cpu = configuration("3d_cpu", "cpu", cpu.spacing, (base, CPU_FEATURES[1] * base // CPU_FEATURES[0]))
    configurations["3d_cpu"] = cpu
    factor = min(cpu.spacing) / min(full_spacing)
    steps = cpu.training.num_epochs * cpu.training.iterations_per_epoch
    busy = f", measured on a busy machine: {machine.busy}" if machine.busy else ""
    notes.append(
        f"3d_cpu: spacing {cpu.spacing} mm ({chosen}{factor:.2f}x full resolution on the finest axis), patch covers "
        f"{_coverage(cpu.patch_size, cpu.median_shape):.1%} of the median case, base width {cpu.network.features_per_stage[0]}, "
        f"~{cpu.estimate.seconds_per_iteration:.2f} s per step on {machine.cpu_cores} CPU threads "
        f"({machine.cpu_gflops:g} GFLOP/s, {precision_name(machine.cpu_precision)}; machine: {machine.name}{busy}): "
        f"{cpu.training.num_epochs} epochs, {steps} steps in {hardware.cpu_training_hours:g} h"
    )
    return Plans(
        **dataset_facts(fingerprint, ds, plans_name),
        label_volumes_mm3={name: [round(min(c.class_volumes_mm3.get(name, 0.0) for c in fingerprint.cases), 1),
                                  round(max(c.class_volumes_mm3.get(name, 0.0) for c in fingerprint.cases), 1)]
                           for name in ds.foreground},
        hardware=hardware,
        configurations=configurations,
        recommended={"cuda": "3d_fullres", "mps": "3d_fullres", "cpu": "3d_cpu"},
        notes=notes,
    )
