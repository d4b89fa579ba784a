"""What the planner knows about a machine: plain data, measured here or taken from a named profile.

A profile is recorded in every plans file (``hardware.machine``) so that a person can see what the
``3d_cpu`` configuration was sized for. Measuring is kneeseg.training.throughput's job (it times a
real training step); this module only holds the result and the named profiles that make plans
reproducible: ``reference`` is the machine the reference plans in ``plans/`` are made for, whatever
machine makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kneeseg.errors import KneesegError
from kneeseg.hardware import precision_name


@dataclass(frozen=True)
class MachineProfile:
    """A machine as the planner sees it.

    ``cpu_gflops`` is the sustained throughput of a whole training step (forward, loss, backward,
    optimiser step) of kneeseg's U-Net on ``cpu_cores`` threads, in ``cpu_precision``: the faster of
    the precisions measured, ``gflops_by_precision``. GFLOPs are counted by planning/estimate.py, so
    ``estimate FLOPs / cpu_gflops`` is the step's time on this machine.
    """

    name: str  # "measured" or a named profile
    cpu_model: str
    cpu_cores: int  # threads a training may use: affinity and container quota, not the host's count
    cpu_precision: str  # "bf16" | "none" (fp32): what 3d_cpu training and prediction use
    cpu_gflops: float
    gflops_by_precision: dict[str, float] = field(default_factory=dict)  # 0: slower than another, not timed
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    measured_seconds: float = 0.0  # what measuring cost (0 for a named profile)
    # Set when other work starved the timed steps even after waiting: the load, for people
    # ("load average 3.1 on 2 CPUs, ..."); the speeds are then lower than this machine's. Left out of
    # the plans' JSON when None, so that plans made on an idle machine read as before.
    busy: str | None = None

    def overridden(self, cpu_cores: int | None = None, cpu_gflops: float | None = None,
                   cpu_precision: str | None = None) -> MachineProfile:
        """This profile with the values a user set by hand (the name says so)."""
        changes: dict = {}
        if cpu_cores is not None:
            changes["cpu_cores"] = cpu_cores
        if cpu_precision is not None:
            changes["cpu_precision"] = cpu_precision
        if cpu_gflops is not None:
            changes["cpu_gflops"] = cpu_gflops
            changes["busy"] = None  # the speed is no longer the busy measurement's
        elif cpu_precision is not None and cpu_precision in self.gflops_by_precision:
            changes["cpu_gflops"] = self.gflops_by_precision[cpu_precision]
        if not changes:
            return self
        by_hand = ", ".join(sorted(key for key in changes if key != "busy"))
        return replace(self, name=f"{self.name}, set by hand: {by_hand}", **changes)

    def describe(self) -> str:
        """One line for people: name, CPU, threads, speed, what measuring found, and how busy the machine was."""
        speeds = ", ".join(f"{precision_name(k)} {v:g}" if v else f"{precision_name(k)} slower (emulated), not timed"
                           for k, v in self.gflops_by_precision.items())
        measured = f" (measured in {self.measured_seconds:g} s: {speeds})" if self.measured_seconds else ""
        busy = f", measured on a busy machine ({self.busy})" if self.busy else ""
        return (f"{self.name}, {self.cpu_model}, {self.cpu_cores} CPU threads, {self.cpu_gflops:g} GFLOP/s in "
                f"{precision_name(self.cpu_precision)}{measured}{busy}")


# The machine the benchmarks' reference figures come from (benchmarks/RESULTS.md, "CPU training
# step"): a 2-core AMD EPYC VM with AVX-512 BF16; bare training step 254 GFLOP/s in bf16 and 103 in
# fp32 at the real scan's 3d_cpu patch. The reference plans are planned for it on any machine. The
# measuring probe (smaller patch, AdamW, clipping) has not run on that machine: it may read lower
# there, and plan lighter than this profile does.
PROFILES = {
    "reference": MachineProfile(
        name="reference", cpu_model="AMD EPYC (2-core VM, AVX-512 BF16)", cpu_cores=2, cpu_precision="bf16",
        cpu_gflops=250.0, gflops_by_precision={"bf16": 250.0, "none": 100.0},
    ),
    # The slowest machine kneeseg runs on: a 2-core AMD EPYC VM with AVX2 only (no AVX-512, no bf16), as
    # the probe measured it on 2026-12-01 (21 GFLOP/s in fp32). The built-in model is planned for it, so
    # that it predicts a full scan in seconds on every CPU (benchmarks/RESULTS.md, "With the built-in model").
    "avx2": MachineProfile(
        name="avx2", cpu_model="AMD EPYC (2-core VM, AVX2 only)", cpu_cores=2, cpu_precision="none",
        cpu_gflops=21.0, gflops_by_precision={"none": 21.0, "bf16": 0.0},
    ),
}


def named_profile(name: str) -> MachineProfile:
    if name not in PROFILES:
        raise KneesegError(f"machine profile '{name}': unknown (named profiles: {', '.join(PROFILES)}; or 'measure')")
    return PROFILES[name]
