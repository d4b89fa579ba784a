"""Measure this machine for the planner: cores, and the sustained throughput of a real training step.

The step is the trainer's (kneeseg's U-Net with the CPU plans' widths, deep-supervision loss,
backward, gradient clipping, AdamW) on one in-memory batch of a small probe patch, timed after a
warm-up step. Each precision the CPU offers is timed, and the faster one wins: a CPU flag alone does
not say which is faster (with oneDNN held to AVX2, ``ONEDNN_MAX_CPU_ISA=AVX2``, bf16 is emulated and
several times slower than fp32 on a CPU that has AVX-512 BF16). Throughput is rounded to two
significant digits, so that planning twice on the same machine gives the same plans in all but
borderline cases. About 2-10 s on 2 cores.
"""

from __future__ import annotations

import time

import torch

from kneeseg.hardware import available_cores, cpu_model
from kneeseg.planning.estimate import estimate_iteration
from kneeseg.planning.machine import MachineProfile
from kneeseg.planning.planner import CPU_FEATURES, build_network
from kneeseg.training.loss import DeepSupervisionLoss
from kneeseg.training.network import UNet

PROBE_PATCH = [32, 48, 48]  # large enough that per-layer overheads do not dominate, small enough to be quick
PROBE_BATCH = 2
PROBE_CLASSES = 4
TIMED_STEPS = 3
CPU_PRECISIONS = ("none", "bf16")  # "none": fp32


def _step_seconds(precision: str, steps: int, give_up_after: float | None) -> float:
    """The fastest of ``steps`` training steps after one warm-up (on a shared machine other work only
    ever slows a step down, so the fastest is the least noisy); stops early once a step takes longer
    than ``give_up_after`` (that precision has lost)."""
    torch.manual_seed(0)
    plan = build_network([1.0, 1.0, 1.0], PROBE_PATCH, CPU_FEATURES)
    net = UNet(plan, 1, PROBE_CLASSES).train()
    loss_fn = DeepSupervisionLoss(plan.num_stages - 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(PROBE_BATCH, 1, *PROBE_PATCH)
    y = torch.randint(0, PROBE_CLASSES, (PROBE_BATCH, *PROBE_PATCH))
    times: list[float] = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = net(x)
        loss_fn(outputs, y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        seconds = time.perf_counter() - start
        if i:
            times.append(seconds)
        if give_up_after is not None and seconds > give_up_after * (3 if i == 0 else 1):
            return min(times) if times else float("inf")
    return min(times)


def _bf16_convolution_is_slower() -> bool:
    """A quick look before timing whole bf16 steps: one convolution's forward and backward. Where bf16
    is emulated, its first training step alone can take tens of seconds."""
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 16, 16, 16, requires_grad=True)
    seconds: dict[str, float] = {"none": float("inf"), "bf16": float("inf")}
    for round_ in range(4):  # the fastest of three rounds after a warm-up: noise only ever slows one down
        for precision in ("none", "bf16"):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = conv(x)
            out.float().sum().backward()
            if round_:
                seconds[precision] = min(seconds[precision], time.perf_counter() - start)
    return seconds["bf16"] > 1.2 * seconds["none"]


def probe_gflop() -> float:
    """GFLOPs of one probe step, counted as the planner counts them."""
    plan = build_network([1.0, 1.0, 1.0], PROBE_PATCH, CPU_FEATURES)
    return estimate_iteration(PROBE_PATCH, PROBE_BATCH, plan, 1, PROBE_CLASSES, "cpu", cpu_gflops=1.0).gflops_per_iteration


def _two_digits(value: float) -> float:
    return float(f"{value:.2g}")


def measure_machine(cores: int | None = None, precisions: tuple[str, ...] = CPU_PRECISIONS) -> MachineProfile:
    """This machine's profile: ``cores`` threads (default: the cores this process may use), each of
    ``precisions`` timed; the CPU's model, and the GPU's name and memory when CUDA is available."""
    cores = cores or available_cores()
    started = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        gflop = probe_gflop()
        measured: dict[str, float] = {}
        fastest: float | None = None
        for precision in precisions:
            if precision == "bf16" and "none" in measured and _bf16_convolution_is_slower():
                measured[precision] = 0.0  # emulated: not worth a step
                continue
            seconds = _step_seconds(precision, TIMED_STEPS, None if fastest is None else 1.5 * fastest)
            measured[precision] = _two_digits(gflop / seconds) if seconds != float("inf") else 0.0
            fastest = seconds if fastest is None else min(fastest, seconds)
    finally:
        torch.set_num_threads(previous)
    best = max(measured, key=lambda p: measured[p])
    gpu_name = gpu_memory = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
        gpu_memory = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return MachineProfile(
        name="measured", cpu_model=cpu_model(), cpu_cores=cores, cpu_precision=best, cpu_gflops=measured[best],
        gflops_by_precision=measured, gpu_name=gpu_name, gpu_memory_gb=gpu_memory,
        measured_seconds=round(time.perf_counter() - started, 1),
    )
