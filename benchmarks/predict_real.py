"""Benchmark: predict the full real scan (512x512x286) on the CPU, with and without mirror TTA.

Needs a trained model for the imported KneeBones3Dify dataset; --train-minutes M trains fold 0 of the
full scan's default CPU plan for M minutes first (10 gives a model whose bones are whole; a model of a
few iterations, --quick-model, predicts noise, and noise makes the restore to the scan's grid take
~1.5 s longer: the window passes themselves do not depend on the weights). Prints wall time and peak
RSS of each kneeseg_predict run, --repeats times. Targets: <= 20 s with mirror TTA on 2 cores,
<= 3 GB peak RSS.

--builtin trains nothing: it runs ``kneeseg_predict -i SCAN -o OUT`` with an empty results folder, as
on a fresh install, so that the built-in model is used (kneeseg/models; issue 27), with its chosen
post-processing.

    python benchmarks/predict_real.py --train-minutes 10 [--workdir DIR] [--repeats 3] [--autocast bf16]
    python benchmarks/predict_real.py --builtin [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command, run_measured  # noqa: E402

from kneeseg.cli.common import positive_float, positive_int  # noqa: E402


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
    for tta in ("mirror", "none"):
        for _ in range(args.repeats):
            seconds, rss, rc = run_measured(kneeseg_command(
                "predict", "-i", str(scan), "-o", str(work / f"pred_{tta}.nii.gz"), "--overwrite", "--tta", tta, "--step", str(args.step),
                "--device", "cpu", *(["--autocast", args.autocast] if args.autocast else []), "--no-progress", *flags))
            assert rc == 0, "prediction failed"
            print(f"predict full scan, tta {tta:6s}: {seconds:6.1f} s  peak RSS {rss:6.0f} MB  (targets <= 20 s with mirror, <= 3072 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
