"""Measure this machine for the planner: cores, and the sustained throughput of a real training step.

The step is the trainer's (kneeseg's U-Net with the CPU plans' widths, deep-supervision loss,
backward, gradient clipping, AdamW) on one in-memory batch of a small probe patch, timed after a
warm-up step. fp32 is always timed; bf16 is timed where the CPU runs it natively (AVX-512 BF16 or
AMX-BF16, and oneDNN not held below them by ``ONEDNN_MAX_CPU_ISA``), judged emulated without a
step where it does not (an emulated bf16 step can take tens of seconds), and, where the CPU's flags
cannot be read, timed after one convolution showed it no slower than fp32. The faster precision wins.

A plan lasts for every training of its dataset, so the probe must measure the machine, not the
moment: each step's CPU time is compared with its wall time on its threads. A step whose threads
ran less than ``STARVED_SHARE`` of the time waited for cores that other work held (on 2 cores, one
busy neighbour makes a 2-thread step several times slower); such a precision is timed again after
a pause, and if the machine stays busy the profile says so (``MachineProfile.busy``, with the load
average) instead of passing the slow steps off as the machine's speed. The load average is only
named, not tested: it lags a minute, counts this process's own earlier work, and is the host's in a
container. Throughput is rounded to two significant digits, so that planning twice on the same
machine gives the same plans in all but borderline cases. About 4-6 s on 2 idle cores; on busy ones
the probe waits for them for up to about 20 s, then times as few starved steps as it can.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kneeseg.hardware import available_cores, cpu_model, load_average, native_bf16
from kneeseg.planning.estimate import estimate_iteration
from kneeseg.planning.machine import MachineProfile
from kneeseg.planning.planner import CPU_FEATURES, build_network
from kneeseg.training.loss import DeepSupervisionLoss
from kneeseg.training.network import UNet

PROBE_PATCH = [32, 48, 48]  # large enough that per-layer overheads do not dominate, small enough to be quick
PROBE_BATCH = 2
PROBE_CLASSES = 4
# On a VM one step may also run faster than the machine sustains (a neighbour idle for a moment): the
# fastest of 3 steps read bf16 310-420 GFLOP/s within minutes on the reference EPYC, and the faster
# readings planned patches its training ran at the slower rate. The median of 5 read 260-310 there;
# the VM's own speed still moves over minutes, which no probe of seconds can know.
TIMED_STEPS = 5
CPU_PRECISIONS = ("none", "bf16")  # "none": fp32
# An idle machine gives a step 0.9-1.0 of its threads' time (OpenMP threads spin while they wait for
# each other); a step sharing 2 cores with one busy process gets about 0.5.
STARVED_SHARE = 0.75
BUSY_RETRIES = 3  # a precision timed on a busy machine is timed again this many times, each after a pause,
BUSY_PAUSE_SECONDS = 4.0
BUSY_WAIT_SECONDS = 20.0  # while the probe has run less than this: a busy probe stays under about half a minute


@dataclass(frozen=True)
class Timing:
    seconds: float  # the step kept: the median unstarved one, else the fastest
    share: float  # its CPU time over its wall time on its threads

    @property
    def starved(self) -> bool:
        return self.share < STARVED_SHARE


def _training_steps(precision: str) -> Iterator[tuple[float, float]]:
    """Endless training steps of the probe network: (wall seconds, this process's CPU seconds) of each."""
    torch.manual_seed(0)
    plan = build_network([1.0, 1.0, 1.0], PROBE_PATCH, CPU_FEATURES)
    net = UNet(plan, 1, PROBE_CLASSES).train()
    loss_fn = DeepSupervisionLoss(plan.num_stages - 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(PROBE_BATCH, 1, *PROBE_PATCH)
    y = torch.randint(0, PROBE_CLASSES, (PROBE_BATCH, *PROBE_PATCH))
    while True:
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = net(x)
        loss_fn(outputs, y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        yield time.perf_counter() - wall, time.process_time() - cpu


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _typical(timings: list[Timing]) -> Timing:
    """The step a precision is judged by: the median of the unstarved steps (of two, the slower: a fast
    outlier is what the median is there to drop), else the fastest starved one."""
    assert timings, "no step timed"
    unstarved = sorted((t for t in timings if not t.starved), key=lambda t: t.seconds)
    if unstarved:
        return unstarved[len(unstarved) // 2]
    return min(timings, key=lambda t: t.seconds)


def _time_precision(precision: str, threads: int, give_up_after: float | None, wait_until: float) -> Timing:
    """The median of the unstarved ones among ``TIMED_STEPS`` training steps after one warm-up. If every
    step was starved: up to ``BUSY_RETRIES`` more rounds, each after a pause and begun before
    ``wait_until`` (``time.perf_counter``). A round ends at a starved step once waiting is over (a
    retry's at its first): more of them would only cost time. Stops early once an unstarved step takes
    longer than ``give_up_after`` (three times that for the warm-up): that precision has lost; a slow
    step on a busy machine proves nothing."""
    steps = _training_steps(precision)
    timings: list[Timing] = []
    for round_ in range(BUSY_RETRIES + 1):
        if round_:
            if time.perf_counter() >= wait_until:
                break
            _pause(BUSY_PAUSE_SECONDS)
        for step in range(TIMED_STEPS + (round_ == 0)):
            wall, cpu = next(steps)
            timing = Timing(wall, cpu / (wall * threads))
            warm_up = round_ == 0 and step == 0
            if give_up_after is not None and not timing.starved and wall > give_up_after * (3 if warm_up else 1):
                return Timing(float("inf"), timing.share)
            if not warm_up:
                timings.append(timing)
            if timing.starved and not warm_up and (round_ or time.perf_counter() >= wait_until):
                break  # still busy: wait again, or give up waiting, rather than time more starved steps
        kept = _typical(timings)
        if not kept.starved:
            break
    return kept


def _bf16_convolution_is_slower() -> bool:
    """Where the CPU's flags are unknown, a quick look before timing whole bf16 steps: one
    convolution's forward and backward. Where bf16 is emulated, its first training step alone can
    take tens of seconds."""
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


def _bf16_is_worth_timing() -> bool:
    native, _ = native_bf16()
    return native if native is not None else not _bf16_convolution_is_slower()


def _busy(share: float, threads: int) -> str:
    """How busy the machine was, for people: the load average and what the probe's threads got."""
    load = load_average()
    cpus = os.cpu_count() or threads
    named = f"load average {load:.1f} on {cpus} CPUs, " if load is not None else ""
    return f"{named}the timed steps ran {share:.0%} of the time on their {threads} threads"


def probe_gflop() -> float:
    """GFLOPs of one probe step, counted as the planner counts them."""
    plan = build_network([1.0, 1.0, 1.0], PROBE_PATCH, CPU_FEATURES)
    return estimate_iteration(PROBE_PATCH, PROBE_BATCH, plan, 1, PROBE_CLASSES, "cpu", cpu_gflops=1.0).gflops_per_iteration


def _two_digits(value: float) -> float:
    return float(f"{value:.2g}")


def measure_machine(cores: int | None = None, precisions: tuple[str, ...] = CPU_PRECISIONS) -> MachineProfile:
    """This machine's profile: ``cores`` threads (default: the cores this process may use), each of
    ``precisions`` timed (bf16 where it is worth it, see the module's docstring); the CPU's model, and
    the GPU's name and memory when CUDA is available; ``busy`` when other work starved the steps."""
    cores = cores or available_cores()
    started = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        gflop = probe_gflop()
        measured: dict[str, float] = {}
        starved: list[float] = []
        faster: float | None = None  # the typical step of the faster precision so far
        for precision in precisions:
            if precision == "bf16" and "none" in measured and not _bf16_is_worth_timing():
                measured[precision] = 0.0  # emulated: not worth a step
                continue
            # Once the machine is found busy, waiting again for the next precision would not help.
            wait_until = started + (0.0 if starved else BUSY_WAIT_SECONDS)
            timing = _time_precision(precision, cores, None if faster is None else 1.5 * faster, wait_until)
            measured[precision] = _two_digits(gflop / timing.seconds) if timing.seconds != float("inf") else 0.0
            if timing.starved:
                starved.append(timing.share)
            faster = timing.seconds if faster is None else min(faster, timing.seconds)
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
        measured_seconds=round(time.perf_counter() - started, 1), busy=_busy(min(starved), cores) if starved else None,
    )
