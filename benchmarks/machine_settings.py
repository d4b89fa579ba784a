"""Benchmark: the CPU plan the planner makes for each machine setting, emulated on this machine.

A setting is a set of environment variables that changes what this machine offers a process:

    native     this machine as it is
    1-thread   OMP_NUM_THREADS=1 (kneeseg takes it as the cores it may use)
    avx2       ONEDNN_MAX_CPU_ISA=AVX2: a CPU without AVX-512, where bf16 is emulated (only meaningful
               on a CPU that has AVX-512; elsewhere it is the native setting again)

For each setting, kneeseg_plan_and_preprocess measures the machine and plans the real scan's half A
(KneeBones3Dify cut at image column 256), as a user's run would; the script prints the measured
profile (cores, GFLOP/s per precision, seconds spent measuring) and the 3d_cpu plan (spacing, patch,
widths, GFLOP per step, epochs planned), beside the plan of the fixed reference profile
(``--machine reference``, the plan every machine got before plans were measured).

With --train it runs benchmarks/kneebones3dify_holdout.py in each setting for each plan (--plans
measured reference): train on half A within --budget-min, predict half B at one scale, evaluate;
and prints the epochs reached and the held-out binary all-bone Dice. Each training takes the whole
budget: 4 runs of 60 minutes for two settings and two plans.

    python benchmarks/machine_settings.py [--settings native 1-thread avx2] [--train [--plans measured reference]]
        [--budget-min 60] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command  # noqa: E402

from kneeseg.demo import REAL_HALVES  # noqa: E402
from kneeseg.hardware import cpu_model, precision_name  # noqa: E402

SETTINGS = {
    "native": {},
    "1-thread": {"OMP_NUM_THREADS": "1"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def cpu_flags() -> str:
    try:
        flags = {f for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split() if f.startswith("avx512") or f.startswith("amx")}
    except OSError:
        return "unknown"
    return " ".join(sorted(flags)) or "no AVX-512 (AVX2 only)"


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, encoding="utf-8")
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}...: exit {done.returncode}\n{done.stderr[-2000:]}")
    return done.stdout


def plan_half_a(shared: Path, work: Path, env: dict[str, str], machine: str) -> dict:
    """Import half A once, then plan it in this setting; returns the plans JSON."""
    number, name = REAL_HALVES["A"]
    flags = ["--raw", str(work / "raw"), "--preprocessed", str(work / "pre"), "--results", str(work / "res")]
    if not (work / "raw" / f"Dataset{number}_{name}").exists():
        run(kneeseg_command("import_kneebones3dify", str(shared / "knee_0000.nii.gz"), "--mask", str(shared / "knee_bone.nii.gz"),
                            "--half", "A", "-d", str(number), "--name", name, *flags), {})
    run(kneeseg_command("plan_and_preprocess", "-d", str(number), "--device", "cpu", "--plan-only", "--no-progress",
                        "--machine", machine, *flags), env)
    return json.loads((work / "pre" / f"Dataset{number}_{name}" / "kneesegPlans.json").read_text(encoding="utf-8"))


def describe(plans: dict) -> str:
    m, cpu = plans["hardware"]["machine"], plans["configurations"]["3d_cpu"]
    speeds = ", ".join(f"{precision_name(k)} {v:g}" if v else f"{precision_name(k)} slower, not timed"
                       for k, v in m["gflops_by_precision"].items())
    widths = cpu["network"]["features_per_stage"]
    return (f"{m['name']}: {m['cpu_cores']} threads, {speeds} GFLOP/s"
            + (f" (measured in {m['measured_seconds']:g} s)" if m["measured_seconds"] else "")
            + f" -> spacing {cpu['spacing'][0]:.3f} mm, patch {'x'.join(map(str, cpu['patch_size']))}, widths "
              f"{widths[0]}-{widths[-1]}, {cpu['estimate']['gflops_per_iteration']:g} GFLOP/step, "
              f"{precision_name(cpu['training']['autocast'])}, {cpu['training']['num_epochs']} epochs planned")


def train_and_evaluate(shared: Path, work: Path, env: dict[str, str], machine: str, budget: float) -> tuple[int, float]:
    """(epochs reached, half-B binary all-bone Dice) of the holdout benchmark in this setting."""
    out = run([sys.executable, str(Path(__file__).resolve().parent / "kneebones3dify_holdout.py"), "--budget-min", str(budget),
               "--machine", machine, "--tta-scales", "1.0", "--shared", str(shared), "--workdir", str(work)], env)
    print(out)
    epochs = int(re.search(r"training: budget [\d.]+ min, (\d+) epochs", out).group(1))
    dice = float(re.search(r"all_bones\s+Dice ([\d.]+)", out).group(1))
    return epochs, dice


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["native", "1-thread"])
    p.add_argument("--train", action="store_true", help="also train on half A and evaluate on half B per setting and plan")
    p.add_argument("--plans", nargs="+", choices=["measured", "reference"], default=["measured", "reference"])
    p.add_argument("--budget-min", type=float, default=60.0)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "KneeBones3Dify")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    print(f"{date.today()}, {cpu_model()}, {os.cpu_count()} CPUs, flags: {cpu_flags()}")
    results = []
    for setting in args.settings:
        env = SETTINGS[setting]
        print(f"\n== {setting} ({' '.join(f'{k}={v}' for k, v in env.items()) or 'no change'})")
        for plan in args.plans:
            plans = plan_half_a(args.shared, work / "plan", env, "measure" if plan == "measured" else "reference")
            print(f"  {plan:9s} {describe(plans)}")
            if args.train:
                epochs, dice = train_and_evaluate(args.shared, work / f"{setting}_{plan}", env,
                                                  "measure" if plan == "measured" else "reference", args.budget_min)
                results.append((setting, plan, epochs, dice))
                print(f"  {plan:9s} {epochs} epochs in {args.budget_min:g} min, half B binary all-bone Dice {dice:.4f}")
    if results:
        print("\n| setting | plan | epochs reached | half B Dice (one scale) |\n| --- | --- | --- | --- |")
        for setting, plan, epochs, dice in results:
            print(f"| {setting} | {plan} | {epochs} | {dice:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
