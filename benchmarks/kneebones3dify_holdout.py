"""Benchmark: honest numbers on the one real scan (KneeBones3Dify, 0.3 T).

The scan is cut at image column 256 into half A (femur, tibia, patella) and half B (femur, tibia).
Trains the CPU configuration on half A within a wall-clock budget, prints the training's pseudo-Dice
curve, chooses post-processing, predicts half B with mirror TTA, once at the plan's spacing and once
with the test-time scales of --tta-scales (default 0.8 0.9 1.0 1.1, as `make demo-real`), and
evaluates both with kneeseg_evaluate (per-bone Dice, IoU, HD95, ASSD, average Hausdorff as the max and
the mean of its two directed distances, the mean being the paper's (pymia's) definition, and the
binary all-bone Dice: the paper's headline metric, 0.9838 on its own split). With --reverse it also
trains on B and predicts A (--train-on B: only that direction). Prints training time, prediction
time and peak RSS. --air-as-noise stores both halves' air as Rician noise at the scan's own noise
level (scan_variants.with_noisy_background) before planning: the scan as a scanner that
does not zero the air would record it, which is most scanners, and the planner then normalises over
the whole image instead of the nonzero region.

    python benchmarks/kneebones3dify_holdout.py [--budget-min 60] [--reverse | --train-on B] [--workdir DIR]
        [--cpu-spacing MM [MM MM]] [--machine measure|reference] [-tr TRAINER] [--seed N] [--max-epochs E]
        [--tta-scales F ... | --tta-scales 1.0] [--air-as-noise]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command, run_measured  # noqa: E402
from scan_variants import with_noisy_background  # noqa: E402

from kneeseg.cli.common import positive_int  # noqa: E402
from kneeseg.demo import REAL_HALVES, REAL_TTA_SCALES  # noqa: E402
from kneeseg.errors import KneesegError  # noqa: E402
from kneeseg.inference.acquisition import air_is_zeroed  # noqa: E402
from kneeseg.inference.predictor import checked_scales  # noqa: E402
from kneeseg.io import read_image, write_image  # noqa: E402
from kneeseg.planning.machine import PROFILES  # noqa: E402
from kneeseg.postprocessing.operations import describe_steps  # noqa: E402
from kneeseg.training.checkpoint import load_checkpoint  # noqa: E402
from kneeseg.training.layout import TRAINER_NAME  # noqa: E402
from kneeseg.training.variants import TRAINERS  # noqa: E402


def run(train_half: str, test_half: str, shared: Path, work: Path, budget: float, plan_flags: list[str],
        train_flags: list[str], tta_scales: list[float], air_as_noise: bool = False) -> None:
    flags = ["--raw", str(work / "raw"), "--preprocessed", str(work / "pre"), "--results", str(work / "res")]
    for half, (number, name) in REAL_HALVES.items():
        scan = work / "raw" / f"Dataset{number}_{name}" / "imagesTr" / "knee_0000.nii.gz"
        if not (work / "raw" / f"Dataset{number}_{name}").exists():
            _, _, rc = run_measured(kneeseg_command("import_kneebones3dify", str(shared / "knee_0000.nii.gz"), "--mask",
                                                    str(shared / "knee_bone.nii.gz"), "--half", half, "-d", str(number),
                                                    "--name", name, *flags))
            assert rc == 0, f"import of half {half} failed"
            if air_as_noise:  # the benchmark's own imported copy; one seed per half, the same every run
                image, geometry = read_image(scan)
                write_image(with_noisy_background(image, np.random.default_rng([number, 10])), geometry, scan)
        else:  # a --workdir of an earlier run: its halves must have the air this run asks for
            image, _ = read_image(scan)
            noisy = not air_is_zeroed(image)
            if noisy != air_as_noise:
                raise SystemExit(f"{scan}: imported with its air {'as noise' if noisy else 'zeroed'} by an earlier run, "
                                 f"{'without' if noisy else 'with'} --air-as-noise here; give another --workdir")
    number, name = REAL_HALVES[train_half]
    _, _, rc = run_measured(kneeseg_command("plan_and_preprocess", "-d", str(number), "--device", "cpu", "--no-progress",
                                            *plan_flags, *flags))
    assert rc == 0, "plan_and_preprocess failed"
    plans = json.loads((work / "pre" / f"Dataset{number}_{name}" / "kneesegPlans.json").read_text(encoding="utf-8"))
    machine, cpu = plans["hardware"]["machine"], plans["configurations"]["3d_cpu"]
    plan_line = (f"plan for machine '{machine['name']}' ({machine['cpu_model']}, {machine['cpu_cores']} threads, "
                 f"{machine['cpu_gflops']:g} GFLOP/s {machine['cpu_precision']}; measured {machine['gflops_by_precision']}): "
                 f"spacing {cpu['spacing'][0]:.3f} mm, patch {'x'.join(map(str, cpu['patch_size']))}, "
                 f"widths {cpu['network']['features_per_stage'][0]}-{cpu['network']['features_per_stage'][-1]}, "
                 f"{cpu['estimate']['gflops_per_iteration']:g} GFLOP/step, {cpu['training']['num_epochs']} epochs planned")
    t_train, rss_train, rc = run_measured(kneeseg_command(
        "train", "0", "-d", str(number), "--device", "cpu", "--time-budget-min", str(budget), "--overwrite",
        "--no-progress", *train_flags, *flags))
    assert rc == 0, "training failed"
    # Post-processing chosen on the fold's validation prediction (here: half A itself, the only case).
    t_post, _, rc = run_measured(kneeseg_command("find_postprocessing", "-d", str(number), "--no-progress", *flags))
    assert rc == 0, "find_postprocessing failed"
    ckpt = next((work / "res" / f"Dataset{number}_{name}").rglob("fold_0/checkpoint_final.pth"))
    history = load_checkpoint(ckpt)["history"]
    test_number, test_name = REAL_HALVES[test_half]
    test_raw = work / "raw" / f"Dataset{test_number}_{test_name}"
    print(f"\n== train on half {train_half}, predict half {test_half} ({date.today()}, {platform.node()}) ==")
    print(plan_line)
    print(f"training: budget {budget} min, {len(history['lr'])} epochs, {t_train / 60:.1f} min, peak RSS {rss_train:.0f} MB")
    print("pseudo-Dice curve (epoch: femur tibia patella | EMA):")
    for e, (dice, ema) in enumerate(zip(history["pseudo_dice"], history["ema_dice"])):
        print(f"  {e + 1:3d}: " + " ".join(f"{d:.3f}" for d in dice) + f" | {ema:.3f}")
    post = json.loads(next((work / "res" / f"Dataset{number}_{name}").glob("*/postprocessing.json")).read_text(encoding="utf-8"))
    print(f"post-processing chosen in {t_post:.0f} s: {describe_steps(post['steps'])}")
    runs = [("", [])] + ([("_scales", ["--tta-scales", *map(str, tta_scales)])] if tta_scales != [1.0] else [])
    for suffix, predict_flags in runs:
        tag = f"{train_half}_to_{test_half}{suffix}"
        pred = work / f"pred_{test_half}{suffix}"
        t_pred, rss_pred, rc = run_measured(kneeseg_command(
            "predict", "-i", str(test_raw / "imagesTr"), "-o", str(pred), "-d", str(number), "--device", "cpu",
            "--overlays", str(work / f"overlays_{test_half}{suffix}"), "--no-progress", *predict_flags, *flags))
        assert rc == 0, "prediction failed"
        summary_path = work / f"summary_{tag}.json"
        qc = work / f"errors_{tag}"  # planes through the scan and through its largest error
        run_measured(kneeseg_command("evaluate", "-ref", str(test_raw / "labelsTr"), "-pred", str(pred), "-o", str(summary_path),
                                     "--overlays", str(qc), "--images", str(test_raw / "imagesTr"), "--no-progress"))
        mean = json.loads(summary_path.read_text(encoding="utf-8"))["mean"]
        how = f" with test-time scales {' '.join(predict_flags[1:])}" if predict_flags else ""
        print(f"prediction of half {test_half}{how}: {t_pred:.1f} s, peak RSS {rss_pred:.0f} MB; QC pictures in {qc}")
        for structure in ("femur", "tibia", "patella", "all_bones"):
            m = mean[structure]
            if structure == "patella" and m["ref_volume_mm3"] == 0:
                print(f"  {structure:9s} (absent from half {test_half}; predicted volume {m['pred_volume_mm3']:.0f} mm3)")
                continue
            print(f"  {structure:9s} Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  HD95 {m['hd95']:.2f} mm  ASSD {m['assd']:.3f} mm  "
                  f"avgHD max {m['avg_hausdorff_max']:.4f} / mean {m['avg_hausdorff_mean']:.4f} mm")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "KneeBones3Dify")
    p.add_argument("--budget-min", type=float, default=60.0, help="training wall-clock budget per half (default 60)")
    p.add_argument("--reverse", action="store_true", help="also train on B and predict A")
    p.add_argument("--train-on", nargs="+", choices=["A", "B"], default=["A"], help="halves to train on (default A)")
    p.add_argument("--cpu-spacing", type=float, nargs="+", metavar="MM",
                   help="kneeseg_plan_and_preprocess --cpu-spacing: the 3d_cpu spacing instead of the planner's")
    p.add_argument("--machine", choices=["measure", *PROFILES], default="measure",
                   help="plan 3d_cpu for this machine, measured (default), or for a named profile (kneeseg_plan_and_preprocess --machine)")
    p.add_argument("--autocast", choices=["none", "bf16"], help="override the plan's precision")
    p.add_argument("-tr", "--trainer", choices=TRAINERS, default=TRAINER_NAME, metavar="TRAINER",
                   help=f"kneeseg_train -tr: {', '.join(TRAINERS)} (default {TRAINER_NAME})")
    p.add_argument("--seed", type=int, default=0, help="training seed (kneeseg_train --seed): another sample of the same recipe")
    p.add_argument("--max-epochs", type=positive_int, metavar="E",  # refused now, not after preprocessing
                   help="kneeseg_train --epochs E with the budget: at most E epochs (the same schedule on a faster machine)")
    p.add_argument("--tta-scales", type=float, nargs="+", default=list(REAL_TTA_SCALES), metavar="F",
                   help="also predict the test half with these test-time scales (kneeseg_predict --tta-scales; "
                        "default 0.8 0.9 1.0 1.1; 1.0: the plan's spacing only)")
    p.add_argument("--air-as-noise", action="store_true",
                   help="store both halves' air as noise (as most scanners do) instead of this scanner's zeros")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    try:
        checked_scales(args.tta_scales)  # refused now, not after an hour of training
    except KneesegError as e:
        p.error(str(e))
    plan_flags = (["--cpu-spacing", *map(str, args.cpu_spacing)] if args.cpu_spacing else []) + ["--machine", args.machine]
    train_flags = (["--autocast", args.autocast] if args.autocast else []) + ["-tr", args.trainer] + (
        ["--epochs", str(args.max_epochs)] if args.max_epochs else []) + ["--seed", str(args.seed)]
    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    halves = list(dict.fromkeys(args.train_on + (["B"] if args.reverse else [])))
    for train_half in halves:
        run(train_half, "B" if train_half == "A" else "A", args.shared, work, args.budget_min, plan_flags, train_flags,
            args.tta_scales, args.air_as_noise)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
