"""Self-configuration for the machine at hand: the cores this process may use, the measured speed of a
training step, the values a user sets by hand, and the CPU plan's response to a slower or faster machine."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import MODEL_DIR, make_phantom, path_flags

from kneeseg import hardware
from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError
from kneeseg.fingerprint import Fingerprint
from kneeseg.planning.machine import PROFILES
from kneeseg.planning.planner import CPU_MIN_ITERATIONS, plan_experiment
from kneeseg.planning.plans import HardwareTarget, Plans
from kneeseg.training import throughput
from kneeseg.training.throughput import BUSY_PAUSE_SECONDS, BUSY_RETRIES, TIMED_STEPS, measure_machine, probe_gflop

DS = "Dataset900_KneePhantom"


def test_cores_follow_affinity_quota_and_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(hardware, "_cgroup_cpu_quota", lambda: None)
    assert hardware.available_cores() == 6
    monkeypatch.setattr(hardware, "_cgroup_cpu_quota", lambda: 2.5)  # a container allowed 2.5 CPUs
    assert hardware.available_cores() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.available_cores() == 1
    assert hardware.augmentation_workers(1, "cpu") == 0 and hardware.augmentation_workers(2, "cpu") == 1
    assert hardware.augmentation_workers(16, "cuda") == 8


def test_measuring_times_a_real_step_in_seconds():
    profile = measure_machine()
    assert profile.name == "measured" and profile.cpu_cores == hardware.available_cores()
    assert set(profile.gflops_by_precision) == {"none", "bf16"}
    assert profile.cpu_precision in ("none", "bf16")
    assert profile.cpu_gflops == max(profile.gflops_by_precision.values()) > 0
    assert profile.measured_seconds > 0  # a few seconds on 2 idle cores (benchmarks/machine_settings.py prints it)
    one = measure_machine(cores=1, precisions=("none",))
    assert one.cpu_cores == 1 and set(one.gflops_by_precision) == {"none"} and one.cpu_precision == "none"


def _fake_steps(steps: dict[str, list[tuple[float, float]]], stepped: list[str] | None = None):
    """Stands in for the probe's training steps: per precision, (wall s, CPU s) of each step, the first
    a warm-up, the last repeated; ``stepped`` records the precisions that were stepped."""
    def training_steps(precision):
        if stepped is not None:
            stepped.append(precision)
        return itertools.chain(steps[precision], itertools.repeat(steps[precision][-1]))
    return training_steps


def _gflops(seconds: float) -> float:
    return float(f"{probe_gflop() / seconds:.2g}")  # two significant digits, as the probe rounds


def test_a_machine_busy_throughout_is_waited_for_then_planned_with_a_warning_naming_the_load(tmp_path, monkeypatch, capsys):
    """The issue's case: a 2-thread probe sharing its cores with a prediction. Its steps get a quarter of
    their threads' time; the probe waits, times again, then records and says that the machine was busy."""
    pauses: list[float] = []
    monkeypatch.setattr(throughput, "_pause", pauses.append)
    monkeypatch.setattr(throughput, "load_average", lambda: 3.1)
    monkeypatch.setattr(throughput, "native_bf16", lambda: (True, "amx_bf16"))
    monkeypatch.setattr(throughput, "_training_steps", _fake_steps({"none": [(2.0, 1.0)], "bf16": [(1.0, 0.5)]}))
    paths = make_phantom(tmp_path, n=1)
    plans_path = paths.preprocessed / DS / "kneesegPlans.json"
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", "--machine", "measure", "--cpu-threads", "2",
                    *path_flags(paths)]) == 0
    out, err = capsys.readouterr()
    load = f"load average 3.1 on {os.cpu_count()} CPUs, the timed steps ran 25% of the time on their 2 threads"
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [f"kneeseg: warning: the machine was busy when it was measured ({load}): 3d_cpu is planned for a "
                        "slower machine; plan again when it is idle (--machine measure) or give --cpu-gflops"], err
    assert out.splitlines()[0].endswith(f"measured on a busy machine ({load})")
    assert pauses == [BUSY_PAUSE_SECONDS] * BUSY_RETRIES  # fp32 waited for; bf16 then timed without waiting again
    plans = Plans.load(plans_path)
    machine = plans.hardware.machine
    assert json.loads(plans_path.read_text())["hardware"]["machine"]["busy"] == machine.busy == load
    # bf16, native by the CPU's flags, is timed however slow the machine: its busy steps are faster than fp32's
    assert machine.gflops_by_precision == {"none": _gflops(2.0), "bf16": _gflops(1.0)} and machine.cpu_precision == "bf16"
    assert any("measured on a busy machine: load average 3.1" in note for note in plans.notes)
    # Planned again: the recorded busy machine is kept, and still named busy; a speed set by hand is not busy.
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", *path_flags(paths)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("machine: as recorded in the existing plans (") and "(load average 3.1" in err
    assert Plans.load(plans_path).hardware.machine == machine
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", "--cpu-gflops", "40", *path_flags(paths)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "busy" not in json.loads(plans_path.read_text())["hardware"]["machine"]  # as plans of an idle machine read


def test_one_slow_step_decides_nothing_on_a_cpu_with_bf16(monkeypatch):
    """bf16's first steps come during a burst of other work (starved, six times slower than fp32's):
    they neither rule bf16 out nor count; it is timed again after a pause and wins. Its CPU flags, not a
    convolution timed during the burst, say that bf16 is native."""
    pauses: list[float] = []
    monkeypatch.setattr(throughput, "_pause", pauses.append)
    monkeypatch.setattr(throughput, "native_bf16", lambda: (True, "avx512_bf16"))
    monkeypatch.setattr(throughput, "_bf16_convolution_is_slower", lambda: pytest.fail("the CPU's flags decide"))
    steps = {"none": [(0.6, 1.2), (0.5, 1.0)], "bf16": [(3.0, 1.5)] * (TIMED_STEPS + 1) + [(0.25, 0.5)]}  # share 1.0 or 0.25
    monkeypatch.setattr(throughput, "_training_steps", _fake_steps(steps))
    profile = measure_machine(cores=2)
    assert pauses == [BUSY_PAUSE_SECONDS] and profile.busy is None
    assert profile.gflops_by_precision == {"none": _gflops(0.5), "bf16": _gflops(0.25)} and profile.cpu_precision == "bf16"
    assert "busy" not in profile.describe()


def test_a_step_faster_than_the_machine_sustains_does_not_set_its_speed(monkeypatch):
    """On a VM a step now and then runs well above the rate a training sustains (the reference EPYC's
    fastest of three read bf16 310-420 GFLOP/s within minutes); the probe reads the median step."""
    monkeypatch.setattr(throughput, "_pause", lambda seconds: pytest.fail("unstarved steps were timed"))
    monkeypatch.setattr(throughput, "native_bf16", lambda: (False, "no avx512_bf16 or amx_bf16"))
    walls = [0.9, 0.5, 0.3, 0.5, 0.5, 0.5]  # a warm-up, then one step 40 % faster than the rest
    steps = [(wall, 2 * wall) for wall in walls]  # 2 threads busy throughout: share 1.0
    monkeypatch.setattr(throughput, "_training_steps", _fake_steps({"none": steps}))
    profile = measure_machine(cores=2)
    assert profile.gflops_by_precision == {"none": _gflops(0.5), "bf16": 0.0} and profile.busy is None


def test_bf16_is_judged_from_the_cpu_flags_and_onednns_cap(monkeypatch):
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    assert hardware.native_bf16() == (False, "no avx512_bf16 or amx_bf16")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert hardware.native_bf16() == (True, "amx_bf16 and avx512_bf16")
    assert hardware.usable_autocast("bf16", "cpu") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN held to AVX2: bf16 emulated on this CPU
    assert hardware.native_bf16() == (False, "ONEDNN_MAX_CPU_ISA=AVX2")
    assert hardware.usable_autocast("bf16", "cpu") == "none"  # training and prediction run fp32 then
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hardware.native_bf16()[0] is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SOME_FUTURE_ISA")  # unknown cap: timing decides
    assert hardware.native_bf16() == (None, "ONEDNN_MAX_CPU_ISA=SOME_FUTURE_ISA")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: None)  # macOS, Windows, ARM
    assert hardware.native_bf16() == (None, "CPU flags unknown")
    # An AVX2-only CPU: bf16 is judged emulated without a step or a convolution.
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(throughput, "_bf16_convolution_is_slower", lambda: pytest.fail("the CPU's flags decide"))
    stepped: list[str] = []
    monkeypatch.setattr(throughput, "_training_steps", _fake_steps({"none": [(0.5, 0.5)]}, stepped))
    profile = measure_machine(cores=1)
    assert stepped == ["none"] and profile.gflops_by_precision == {"none": _gflops(0.5), "bf16": 0.0}
    assert profile.cpu_precision == "none"


def test_the_plans_record_the_measured_machine_and_the_values_set_by_hand(tmp_path, capsys):
    paths = make_phantom(tmp_path, n=1)
    plans_path = paths.preprocessed / DS / "kneesegPlans.json"
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", *path_flags(paths)]) == 0
    machine = Plans.load(plans_path).hardware.machine
    assert machine.name == "measured" and machine.cpu_cores == hardware.available_cores() and machine.measured_seconds > 0
    assert capsys.readouterr().out.startswith(f"machine: measured, {machine.cpu_model}, {machine.cpu_cores} CPU threads")
    measured = machine
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", *path_flags(paths)]) == 0  # planned again
    assert Plans.load(plans_path).hardware.machine == measured  # the recorded machine, not a new measurement
    assert capsys.readouterr().out.startswith("machine: as recorded in the existing plans (measured,")
    flags = ["--machine", "measure", "--cpu-threads", "1", "--cpu-gflops", "40", "--cpu-precision", "fp32"]
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", *flags, *path_flags(paths)]) == 0
    plans = Plans.load(plans_path)
    machine = plans.hardware.machine
    assert (machine.cpu_cores, machine.cpu_gflops, machine.cpu_precision, machine.measured_seconds) == (1, 40.0, "none", 0.0)
    assert plans.configuration("3d_cpu").training.autocast == "none"
    assert json.loads(plans_path.read_text())["hardware"]["machine"]["cpu_gflops"] == 40.0  # readable JSON
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", "--machine", "reference", "--cpu-gflops", "50",
                    *path_flags(paths)]) == 0
    machine = Plans.load(plans_path).hardware.machine
    assert machine.cpu_gflops == 50 and machine.name == "reference, set by hand: cpu_gflops"
    assert machine.cpu_precision == PROFILES["reference"].cpu_precision
    # The built-in model's profile: the AVX2-only machine, planned in fp32 whatever machine plans it.
    assert pp_main(["--device", "cpu", "--no-progress", "--plan-only", "--machine", "avx2", *path_flags(paths)]) == 0
    plans = Plans.load(plans_path)
    assert plans.hardware.machine == PROFILES["avx2"] and plans.configuration("3d_cpu").training.autocast == "none"


def _knee_sized_inputs(tmp_path) -> tuple[Fingerprint, DatasetJson]:
    """The small phantom's fingerprint as if scanned at 0.5 mm (five times the voxels per axis), so that
    the CPU plan meets every trade of the rule, as the real 0.35 mm scan does."""
    paths = make_phantom(tmp_path, n=1)
    assert pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", "--plan-only", *path_flags(paths)]) == 0
    out = paths.preprocessed / DS
    data = json.loads((out / "dataset_fingerprint.json").read_text())
    for case in data["cases"]:
        case["spacing"] = [s / 5 for s in case["spacing"]]
        for key in ("shape", "shape_after_crop", "body_shape"):
            case[key] = [5 * n for n in case[key]]
    return Fingerprint.from_dict(data), DatasetJson.load(out / "dataset.json")


def test_a_slower_machine_gets_a_lighter_plan_that_keeps_its_steps(tmp_path):
    fingerprint, ds = _knee_sized_inputs(tmp_path)
    plans = [plan_experiment(fingerprint, ds, HardwareTarget(replace(PROFILES["reference"], cpu_gflops=g)))
             for g in (1000, 250, 100, 40, 15)]
    cpu = [p.configuration("3d_cpu") for p in plans]
    # Slower: never a finer grid, never a wider network, never a costlier step.
    assert all(a.spacing[0] <= b.spacing[0] for a, b in zip(cpu, cpu[1:])), [c.spacing for c in cpu]
    assert all(a.network.features_per_stage[0] >= b.network.features_per_stage[0] for a, b in zip(cpu, cpu[1:]))
    gflop = [c.estimate.gflops_per_iteration for c in cpu]
    assert all(a >= b for a, b in zip(gflop, gflop[1:])) and gflop[0] > gflop[-1]
    assert cpu[-1].network.features_per_stage[0] < cpu[1].network.features_per_stage[0]  # the slowest is narrowed
    for p, c in zip(plans, cpu):  # each machine still gets the steps the rule protects, in its own hour
        assert c.estimate.gflops_per_iteration <= p.hardware.machine.cpu_gflops * 3600 / CPU_MIN_ITERATIONS
        assert c.training.num_epochs * c.training.iterations_per_epoch >= 0.75 * CPU_MIN_ITERATIONS
    # A longer budget is like a faster machine: 40 GFLOP/s for 2.5 h allow the steps of 100 GFLOP/s for 1 h.
    longer = plan_experiment(fingerprint, ds, HardwareTarget(replace(PROFILES["reference"], cpu_gflops=40), cpu_training_hours=2.5))
    same = longer.configuration("3d_cpu")
    assert (same.spacing, same.patch_size, same.network) == (cpu[2].spacing, cpu[2].patch_size, cpu[2].network)


def test_training_and_prediction_say_what_they_run_on(small_model, tmp_path, capsys):
    """Both use the cores this process may use, and say so in their first log line."""
    cores = hardware.available_cores()
    log = (small_model.results / MODEL_DIR / "fold_0" / "training_log.txt").read_text(encoding="utf-8").splitlines()
    workers = hardware.augmentation_workers(cores, "cpu")
    assert f"on cpu ({cores} threads, world 1, {workers} augmentation workers)" in log[0]
    scan = small_model.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    capsys.readouterr()
    assert predict_main(["-i", str(scan), "-o", str(tmp_path / "out.nii.gz"), "--device", "cpu", *path_flags(small_model)]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("kneeseg: predicting 1 case(s) on cpu") and f"({cores} CPU threads)" in first, first


def test_plans_of_version_2_still_load(tmp_path):
    """Models trained before machines were measured keep working: their plans read as version 3."""
    data = json.loads((Path(__file__).resolve().parents[1] / "plans" / f"{DS}.kneesegPlans.json").read_text(encoding="utf-8"))
    current = Plans.from_data(data, "current")
    data.update(version=2, hardware={"gpu_memory_gb": 8.0, "cpu_threads": 2, "cpu_seconds_per_iteration": 3.0,
                                     "cpu_training_hours": 1.0})
    del data["label_volumes_mm3"]
    (tmp_path / "plans.json").write_text(json.dumps(data), encoding="utf-8")
    old = Plans.load(tmp_path / "plans.json")
    assert old.version == 3 and old.hardware.machine.name == "fixed (plans version 2)"
    assert old.hardware.machine.cpu_gflops == 100.0 and old.label_volumes_mm3 == {}
    assert old.configurations == current.configurations
    data["version"] = 1
    (tmp_path / "plans.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(KneesegError, match="plans version 1, this kneeseg reads version 3"):
        Plans.load(tmp_path / "plans.json")
