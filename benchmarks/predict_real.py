"""Benchmark: predict the full real scan (512x512x286) on the CPU, with and without mirror TTA.

Needs a trained model for the imported KneeBones3Dify dataset; --train-minutes M trains fold 0 of the
full scan's default CPU plan for M minutes first (10 gives a model whose bones are whole; a model of a
few iterations, --quick-model, predicts noise, and noise makes the restore to the scan's grid take
~1.5 s longer: the window passes themselves do not depend on the weights). Prints wall time and peak
RSS of each kneeseg_predict run, --repeats times, where the time went (kneeseg_predict --timings:
read, preprocess, network, to the scan's grid, post-processing, QC, write) and the network's GFLOP/s
as a share of what the planner measures this machine to do in the same precision (a training step,
counted the same way: kneeseg.planning.estimate). Targets (issue 39): <= 20 s with mirror TTA on
2 cores, <= 1.5 GB peak RSS, the network at >= 0.6 of the planner's GFLOP/s.

--builtin trains nothing: it runs ``kneeseg_predict -i SCAN -o OUT`` with an empty results folder, as
on a fresh install, so that the built-in model is used (kneeseg/models; issue 27), with its chosen
post-processing.

    python benchmarks/predict_real.py --train-minutes 10 [--workdir DIR] [--repeats 3] [--autocast bf16]
    python benchmarks/predict_real.py --builtin [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command, run_measured  # noqa: E402

from kneeseg.api import machine_profile  # noqa: E402
from kneeseg.cli.common import positive_float, positive_int  # noqa: E402

NETWORK = re.compile(r"network [\d.]+ s \((\w+), ([\d.]+) GFLOP, (\d+) GFLOP/s\)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "KneeBones3Dify")
    p.add_argument("--step", type=float, default=0.5, help="sliding-window step (default 0.5)")
    p.add_argument("--workdir", type=Path, help="reuse a work folder (raw/, preprocessed/, results/)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--train-minutes", type=positive_float, help="train fold 0 for this many minutes first")
    model.add_argument("--quick-model", action="store_true", help="train a model for 2 x 5 iterations first")
    model.add_argument("--builtin", action="store_true", help="no model in the results folder: the built-in model")
    p.add_argument("--repeats", type=positive_int, default=1, help="predictions per TTA setting (default 1)")
    p.add_argument("--autocast", choices=["none", "bf16"], help="override the plan's precision")
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    flags = ["--raw", str(work / "raw"), "--preprocessed", str(work / "pre"), "--results", str(work / "res")]
    if args.quick_model or args.train_minutes is not None:
        if not (work / "raw" / "Dataset901_KneeBones3Dify").exists():
            run_measured(kneeseg_command("import_kneebones3dify", str(args.shared / "knee_0000.nii.gz"), "--mask",
                                         str(args.shared / "knee_bone.nii.gz"), *flags))
        run_measured(kneeseg_command("plan_and_preprocess", "--device", "cpu", "--no-progress", *flags))
        schedule = (["--time-budget-min", str(args.train_minutes)] if args.train_minutes
                    else ["--epochs", "2", "--iters-per-epoch", "5", "--val-iters", "1"])
        seconds, _, rc = run_measured(kneeseg_command("train", "0", "--device", "cpu", *schedule, "--overwrite", "--no-progress",
                                                      *flags), quiet=True)
        assert rc == 0, "training failed"
        print(f"trained fold 0 ({' '.join(schedule)}) in {seconds / 60:.1f} min")
    scan = args.shared / "knee_0000.nii.gz"
    print(f"date {date.today()}  machine {platform.node()} ({platform.machine()}), autocast {args.autocast or 'as planned'}, step {args.step}")
    if args.builtin:
        if any((work / "res").glob("Dataset*")):
            raise SystemExit(f"{work / 'res'}: holds trained models; --builtin needs a results folder without any")
        print("model: the built-in model (nothing in the results folder)")
    machine = machine_profile()  # what the planner measures here: the yardstick of the network's speed
    print(f"the planner's measurement of this machine: {machine.describe()}")
    for tta in ("mirror", "none"):
        for _ in range(args.repeats):
            log = work / f"pred_{tta}.stderr.txt"
            seconds, rss, rc = run_measured(kneeseg_command(
                "predict", "-i", str(scan), "-o", str(work / f"pred_{tta}.nii.gz"), "--overwrite", "--tta", tta, "--step", str(args.step),
                "--device", "cpu", *(["--autocast", args.autocast] if args.autocast else []), "--timings", "--no-progress", *flags),
                stderr=log)
            assert rc == 0, f"prediction failed: {log.read_text()[-2000:]}"
            print(f"predict full scan, tta {tta:6s}: {seconds:6.1f} s  peak RSS {rss:6.0f} MB  (targets <= 20 s with mirror, <= 1536 MB)")
            timings = next(line for line in log.read_text().splitlines() if "kneeseg: timings:" in line)
            print(f"  where the time went: {timings.rsplit('.nii.gz: ', 1)[-1]}")
            network = NETWORK.search(timings)
            if network:
                precision, rate = network.group(1), float(network.group(3))
                planned = machine.gflops_by_precision.get("none" if precision == "fp32" else precision, 0.0)
                if planned:
                    print(f"  network: {rate:.0f} GFLOP/s in {precision}, {rate / planned:.2f} of the planner's {planned:g} GFLOP/s "
                          "(target >= 0.6)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
