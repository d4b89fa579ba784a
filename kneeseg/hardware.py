"""What this process can use: the accelerator, the CPU cores it may run on, and what they are."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from kneeseg.errors import KneesegError


def detect_device() -> str:
    """'cuda' if a CUDA GPU is usable, else 'mps' on Apple silicon, else 'cpu'."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(requested: str | None) -> str:
    """Validate a --device value ('auto'/None -> detected)."""
    if requested in (None, "auto"):
        return detect_device()
    kind = requested.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise KneesegError(f"--device {requested}: unknown device (use cpu, cuda, cuda:N, mps or auto)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise KneesegError(f"--device {requested}: no CUDA GPU is available to this process")
    if kind == "mps" and detect_device() != "mps":
        raise KneesegError(f"--device {requested}: MPS is not available on this machine")
    return requested


def usable_autocast(requested: str, device: str) -> str:
    """The mixed precision to use: ``requested`` if this device runs it natively, else 'none'.

    On CPUs, bf16 autocast roughly halves a U-Net step where AVX-512 BF16 or AMX exist and oneDNN may
    use them (:func:`native_bf16`); elsewhere it is emulated, about 40x slower than fp32 (the built-in
    model's full-scan pass 4 minutes with oneDNN held to AVX2), so it is switched off. fp16 autocast is
    used on CUDA only.
    """
    kind = device.split(":")[0]
    if requested == "bf16" and kind == "cpu":
        native, _ = native_bf16()
        if native is None:  # flags unreadable, or an ISA cap this does not know: what torch says the CPU has
            cpu = torch.cpu
            native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        return "bf16" if native else "none"
    if requested == "bf16" and kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and kind != "cuda":
        return "none"
    if kind == "mps":
        return "none"
    return requested


def precision_name(autocast: str) -> str:
    """How logs and plans' notes name a precision: autocast 'none' is fp32."""
    return "fp32" if autocast == "none" else autocast


def _cgroup_cpu_quota() -> float | None:
    """CPUs a container's quota allows (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may keep busy: the CPUs it is allowed to run on (affinity), capped by a
    container's CPU quota and by OMP_NUM_THREADS when the user set it. ``os.cpu_count()`` counts the
    host's CPUs, and torch's default thread count ignores quotas: in a 2-CPU container on a 64-core
    host both would oversubscribe the quota many times over."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, cores)


def _cpuinfo_field(key: str) -> str | None:
    """The first ``key`` line of /proc/cpuinfo (Linux), None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str] | None:
    """The x86 CPU's feature flags (/proc/cpuinfo), None where they cannot be read (macOS, Windows, ARM)."""
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags is not None else None


# oneDNN, which runs torch's CPU convolutions, can be held to an older instruction set
# (ONEDNN_MAX_CPU_ISA); below AVX512_CORE_BF16 its bf16 convolutions are emulated, whatever the CPU has.
_ISA_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ISA_CAPS_WITH_BF16 = {"", "DEFAULT", "ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                       "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


def native_bf16() -> tuple[bool | None, str]:
    """Whether bf16 convolutions run natively on this CPU, and why: True where it has AVX-512 BF16 or
    AMX-BF16 and oneDNN is not held below them, False where it has neither or oneDNN is held, None
    where that cannot be told (flags unreadable, an ISA cap this does not know): then timing decides."""
    variable = "ONEDNN_MAX_CPU_ISA" if "ONEDNN_MAX_CPU_ISA" in os.environ else "DNNL_MAX_CPU_ISA"
    cap = os.environ.get(variable, "").strip().upper()
    if cap in _ISA_CAPS_WITHOUT_BF16:
        return False, f"{variable}={cap}"
    flags = cpu_flags()
    if flags is None or cap not in _ISA_CAPS_WITH_BF16:
        return None, "CPU flags unknown" if flags is None else f"{variable}={cap}"
    native = sorted({"avx512_bf16", "amx_bf16"} & flags)
    return (True, " and ".join(native)) if native else (False, "no avx512_bf16 or amx_bf16")


def load_average() -> float | None:
    """The host's one-minute load average (runnable processes, all CPUs), None where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def augmentation_workers(cores: int, device: str) -> int:
    """Background augmentation processes for a training on ``cores`` cores. On a CPU the step itself
    needs the cores: one worker keeps a batch ready on 2 cores (the trainer's step stays within 10 % of
    a bare loop's, benchmarks/RESULTS.md), none on 1; a GPU is fed by all cores but one, up to 8."""
    if device.split(":")[0] == "cpu":
        return 0 if cores <= 1 else max(1, cores // 8)
    return max(1, min(8, cores - 1))


def use_cores(cores: int | None = None) -> int:
    """Make torch compute on ``cores`` threads (default: :func:`available_cores`); returns the number."""
    cores = cores or available_cores()
    torch.set_num_threads(cores)
    return cores
