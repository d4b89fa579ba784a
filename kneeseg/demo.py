"""The main job end to end, on the embedded default data or on the real scan.

``make demo`` (no download, CPU only, about 10 minutes): synthesises the reference phantom dataset (6
training + 2 held-out knees), plans and preprocesses it for this machine (measured, as
kneeseg_plan_and_preprocess does; ``--machine reference``: the reference machine's plans) and for the
demo's training budget (``--cpu-training-hours`` of the planner), trains fold 0 of the CPU
configuration within that budget, chooses post-processing on the fold's
validation case, predicts the held-out knees, evaluates them, exports STL bones and QC overlays,
and prints a short report (also ``report.txt``).

``make demo-real`` (``--real SOURCE``): the same on the KneeBones3Dify scan (the scan + mask files of
../shared/data/KneeBones3Dify, or the Zenodo download's Data/ + GT-Masks/ folder) with the half-A /
half-B protocol: cut at image column 256, train on half A (all three bones), predict and evaluate
half B (femur and tibia), which the model never saw. It predicts half B at four test-time scales
(0.8, 0.9, 1.0, 1.1 times the plan's spacing, averaged): the more accurate and ~4x slower
prediction (benchmarks/RESULTS.md); the phantom demo predicts at the plan's spacing only.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from kneeseg import api
from kneeseg.dataset.kneebones3dify import import_kneebones3dify
from kneeseg.dataset.layout import dataset_folder_name
from kneeseg.errors import KneesegError, cli_entry
from kneeseg.inference.predictor import checked_scales
from kneeseg.inference.study import PredictionOptions, StudyOptions
from kneeseg.io import atomic_write_text
from kneeseg.paths import KneesegPaths
from kneeseg.planning.machine import PROFILES
from kneeseg.planning.plans import HardwareTarget
from kneeseg.postprocessing.operations import describe_steps
from kneeseg.preprocessing.pipeline import plan_and_preprocess
from kneeseg.reference import PHANTOM_DATASET, make_phantom_dataset
from kneeseg.training.trainer import TrainOptions

REAL_HALVES = {"A": (902, "KneeHalfA"), "B": (903, "KneeHalfB")}  # train on A, hold out B
REAL_TRAIN, REAL_TEST = (dataset_folder_name(*REAL_HALVES[h]) for h in "AB")
REAL_TTA_SCALES = (0.8, 0.9, 1.0, 1.1)  # raised half B's all-bone Dice of all five 60-minute models tried
# The phantom demo's training budget, so that `make demo` ends within 10 minutes: the rest of it takes
# 45-100 s (100 on the AVX2-only EPYC), and the training step up to 16 s more than its budget (set-up, the
# last validation prediction, epochs slower than the median). With 9 minutes the demo took 9.3-10.4 minutes.
DEMO_TRAIN_MINUTES = 8.5


def import_real_halves(source: Path, raw: Path) -> None:
    """Half A (training) and half B (held out) of the KneeBones3Dify scan at ``source``."""
    source = Path(source)
    if (source / "knee_0000.nii.gz").exists():
        scan, mask = source / "knee_0000.nii.gz", source / "knee_bone.nii.gz"
    elif (source / "Data").is_dir():
        scan, mask = source, None
    else:
        raise KneesegError(f"{source}: neither knee_0000.nii.gz + knee_bone.nii.gz nor a Zenodo Data/ + GT-Masks/ folder")
    for half, (number, name) in REAL_HALVES.items():
        import_kneebones3dify(scan, raw, mask=mask, dataset_id=number, name=name, half=half)


def run_demo(output: Path, train_minutes: float = DEMO_TRAIN_MINUTES, seed: int = 0, progress: bool = True,
             real_source: Path | None = None, tta_scales: tuple[float, ...] = (1.0,), machine: str = "measure") -> dict:
    """The demo in ``output``; ``machine``: plan 3d_cpu for this machine, measured (as
    kneeseg_plan_and_preprocess does), or for a named profile ('reference': the same plans everywhere)."""
    tta_scales = tuple(checked_scales(tta_scales))  # refused before anything is written, not after the training
    if not train_minutes > 0:  # it sizes the plan too: no hours, no plan
        raise KneesegError(f"--train-minutes {train_minutes:g}: give the training time in minutes, more than 0")
    output = Path(output)
    paths = KneesegPaths(output / "raw", output / "preprocessed", output / "results")
    dataset, test = (REAL_TRAIN, REAL_TEST) if real_source else (PHANTOM_DATASET, PHANTOM_DATASET)
    for folder in {paths.raw / dataset, paths.raw / test, paths.preprocessed / dataset, paths.results / dataset}:
        shutil.rmtree(folder, ignore_errors=True)  # the demo always starts afresh
    timings: dict[str, float] = {}

    def step(name, fn, *args, **kwargs):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return result

    # 3d_cpu is sized for the training the demo runs, not for the hour a user's plans default to: an hour's
    # patch trained for minutes gets a few epochs, the fewer the faster the machine reads (benchmarks/RESULTS.md).
    hardware = HardwareTarget(machine=step("measure this machine" if machine == "measure" else f"machine: {machine}",
                                           api.machine_profile, machine), cpu_training_hours=train_minutes / 60)
    if real_source:
        step("import the real scan (halves A and B)", import_real_halves, real_source, paths.raw)
        test_images, test_labels = paths.raw / test / "imagesTr", paths.raw / test / "labelsTr"
    else:
        step("synthesise phantoms", make_phantom_dataset, paths.raw, progress=progress)
        test_images, test_labels = paths.raw / test / "imagesTs", paths.raw / test / "labelsTs"
    prep = step("plan and preprocess", plan_and_preprocess, paths, dataset, device="cpu",
                hardware=hardware, seed=seed, progress=progress)
    options = TrainOptions(time_budget_min=train_minutes, seed=seed, device="cpu", progress=progress)
    trained = step("train fold 0", api.train, paths, "0", dataset, options=options)
    post = step("choose post-processing", api.find_postprocessing, paths, dataset, progress=progress)
    predictions = step("predict held-out knees", api.predict, test_images, output / "predictions", paths, dataset=dataset,
                       options=PredictionOptions(progress=progress, tta_scales=tuple(tta_scales)),
                       study=StudyOptions(overlays=output / "overlays"))
    summary = step("evaluate", api.evaluate, test_labels, output / "predictions", output / "evaluation" / "summary.json",
                   overlays=output / "evaluation" / "overlays", images=test_images, progress=progress)
    meshes = step("export STL bones", api.export_stl, predictions[0], output / "stl")

    config = prep.plans.configuration(prep.plans.recommended_configuration("cpu"))
    lines = [
        f"kneeseg demo report ({'real scan: train half A, predict half B' if real_source else 'phantom knees'})",
        f"planned for     {hardware.machine.describe()}",
        f"configuration   {config.name}: spacing {config.spacing} mm, patch {config.patch_size}, "
        f"{config.training.optimizer}, {trained.epochs} epochs x {config.training.iterations_per_epoch} iterations",
        f"training        best EMA pseudo-Dice {trained.best_ema_dice:.3f}, data wait {100 * trained.data_wait_fraction:.1f}%",
        f"post-processing {describe_steps(post['steps'])}",
        "prediction      mirror TTA, " + ("at the plan's spacing" if tuple(tta_scales) == (1.0,) else
                                             f"test-time scales {' '.join(f'{f:g}' for f in tta_scales)} x the plan's spacing"),
        "held-out knees  (mean over cases)",
    ]
    for name, m in summary["mean"].items():
        if m["ref_volume_mm3"] == 0:  # the patella is not in half B: anything predicted is a false positive
            lines.append(f"  {name:10s} not in the held-out data; predicted {m['pred_volume_mm3']:.0f} mm3")
            continue
        lines.append(f"  {name:10s} Dice {m['dice']:.3f}  IoU {m['iou']:.3f}  HD95 {m['hd95']:5.2f} mm  ASSD {m['assd']:.2f} mm")
    lines.append("STL bones       " + ", ".join(f"{r.label} {r.faces} triangles ({100 * (r.volume_ratio - 1):+.1f}% volume)" for r in meshes))
    lines.append("timings         " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {sum(timings.values()) / 60:.1f} min")
    lines += [
        f"plans           {prep.plans_path}",
        f"model           {trained.fold_dir.parent}  (progress.png, training_log.txt in fold_0)",
        f"predictions     {output / 'predictions'}",
        f"evaluation      {output / 'evaluation' / 'summary.json'} (+ .csv, overlays/)",
        f"QC overlays     {output / 'overlays'}",
        f"STL             {output / 'stl'}",
    ]
    report = "\n".join(lines)
    atomic_write_text(output / "report.txt", report + "\n")
    print("\n" + report)
    return {"summary": summary, "timings": timings, "training": trained, "report": report}


@cli_entry("kneeseg.demo")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kneeseg.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("demo_output"))
    p.add_argument("--real", type=Path, metavar="SOURCE", help="the KneeBones3Dify scan (see above) instead of phantoms")
    p.add_argument("--train-minutes", type=float, help=f"training time budget (default {DEMO_TRAIN_MINUTES:g}; 60 with --real)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--machine", choices=["measure", *PROFILES], default="measure",
                   help="plan 3d_cpu for this machine, measured (default), or for a named profile (reference: the "
                        "project's reference machine, the same plans everywhere)")
    p.add_argument("--tta-scales", type=float, nargs="+", metavar="F",
                   help="test-time scales (kneeseg_predict --tta-scales; default 1.0, and 0.8 0.9 1.0 1.1 with --real)")
    args = p.parse_args(argv)
    minutes = args.train_minutes if args.train_minutes is not None else (60.0 if args.real else DEMO_TRAIN_MINUTES)
    scales = args.tta_scales or (REAL_TTA_SCALES if args.real else (1.0,))
    run_demo(args.output, minutes, args.seed, real_source=args.real, tta_scales=scales, machine=args.machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
