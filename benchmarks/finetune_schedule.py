"""Benchmark: the fine-tuning schedule (kneeseg.training.finetune.FineTuneSchedule), chosen on phantoms.

The built-in model (one 0.3 T 3D SST2 scan) is fine-tuned on --train phantom knees (another anatomy
and contrast: kneeseg.dataset.phantom; their air, noise in the phantom, stored as zeros as the
built-in model's plans ask) with each schedule for --minutes of wall-clock time, fold 'all', and
evaluated on --test held-out phantoms: binary all-bone Dice and each bone's Dice. Beside them: the
built-in model as it is, and a training from random weights with the same plans and budget.
``--epochs E --iters I`` trains a fixed number of steps instead (the same for every schedule,
whatever else runs on the machine); ``--no-tta`` predicts without mirroring (twice as fast).

    python benchmarks/finetune_schedule.py [--minutes 3 | --epochs E --iters I] [--train 4] [--test 3]
        [--workdir DIR] [--schedules NAME:LR_FACTOR:WARMUP_EPOCHS ...] [--no-scratch] [--no-tta]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from kneeseg.api import PlanOptions, plan_and_preprocess, predict, train
from kneeseg.dataset.phantom import synthesize_dataset
from kneeseg.inference.study import PredictionOptions, StudyOptions
from kneeseg.io import read_image
from kneeseg.paths import KneesegPaths
from kneeseg.training.finetune import FineTuneSchedule
from kneeseg.training.trainer import TrainOptions

DATASET = "Dataset960_FineTunePhantom"
BONES = {"femur": 1, "tibia": 2, "patella": 3}
DEFAULT_SCHEDULES = ["lr1.0-no-warmup:1.0:0", "lr1.0:1.0:1", "lr0.3:0.3:1", "lr0.1:0.1:1"]


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    total = int(ref.sum()) + int(pred.sum())
    return 2.0 * int(np.count_nonzero(ref & pred)) / total if total else 1.0


def evaluate(raw: Path, predictions: Path) -> dict[str, float]:
    """Mean over the test cases of the all-bone Dice and of each bone's Dice."""
    scores: dict[str, list[float]] = {name: [] for name in ("all_bones", *BONES)}
    for ref_path in sorted((raw / "labelsTs").glob("*.nii.gz")):
        ref = read_image(ref_path)[0]
        pred = read_image(predictions / ref_path.name)[0]
        scores["all_bones"].append(dice(ref > 0, pred > 0))
        for name, value in BONES.items():
            scores[name].append(dice(ref == value, pred == value))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per schedule (default 3)")
    p.add_argument("--train", type=int, default=4, help="phantom knees to fine-tune on (default 4)")
    p.add_argument("--test", type=int, default=3, help="held-out phantom knees (default 3)")
    p.add_argument("--schedules", nargs="+", default=DEFAULT_SCHEDULES, metavar="NAME:LR_FACTOR:WARMUP_EPOCHS")
    p.add_argument("--epochs", type=int, help="a fixed schedule of this many epochs (with --iters) instead of --minutes")
    p.add_argument("--iters", type=int, default=50, help="iterations per epoch with --epochs (default 50, the plan's)")
    p.add_argument("--no-scratch", dest="scratch", action="store_false", help="leave out the training from random weights")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="predict without test-time mirroring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    paths = KneesegPaths(work / "raw", work / "pre", work / "res")
    raw = paths.raw / DATASET
    if not raw.exists():
        synthesize_dataset(raw, args.train, seed=args.seed, num_test=args.test, progress=False)
    if not (paths.preprocessed / DATASET / "kneesegPlans.json").exists():
        plan_and_preprocess(paths, [DATASET], PlanOptions(plans_from="builtin", progress=False))
    rows = []
    start = time.perf_counter()
    prediction = PredictionOptions(progress=False, tta=args.tta)
    predict(raw / "imagesTs", work / "pred_builtin", model_dir=Path("builtin"), options=prediction, study=StudyOptions(overwrite=True))
    rows.append(("built-in as it is", 0, time.perf_counter() - start, evaluate(raw, work / "pred_builtin")))
    runs: list[tuple[str, FineTuneSchedule | None]] = []
    for text in args.schedules:
        name, factor, warmup = text.split(":")
        runs.append((name, FineTuneSchedule(lr_factor=float(factor), warmup_epochs=float(warmup))))
    if args.scratch:
        runs.append(("from scratch", None))
    for name, schedule in runs:
        length = dict(epochs=args.epochs, iters_per_epoch=args.iters, val_iters=2) if args.epochs else dict(time_budget_min=args.minutes)
        options = TrainOptions(**length, overwrite=True, progress=False, seed=args.seed,
                               pretrained="builtin" if schedule else None, fine_tune=schedule)
        start = time.perf_counter()
        result = train(paths, "all", DATASET, options=options)
        seconds = time.perf_counter() - start
        out = work / ("pred_" + name.replace(".", "_").replace(" ", "_"))
        predict(raw / "imagesTs", out, model_dir=result.model_dir, options=prediction, study=StudyOptions(overwrite=True))
        rows.append((name, result.epochs, seconds, evaluate(raw, out)))
    length = f"{args.epochs} epochs of {args.iters} steps" if args.epochs else f"{args.minutes} min"
    print(f"\n== fine-tuning schedules on phantoms ({date.today()}, {platform.node()}): built-in model, {args.train} "
          f"training / {args.test} held-out phantoms, {length} per run, fold all, seed {args.seed}, "
          f"{'mirroring' if args.tta else 'no'} TTA ==")
    print(f"{'run':24s} {'epochs':>6s} {'min':>5s}  all-bone  femur  tibia  patella")
    for name, epochs, seconds, score in rows:
        print(f"{name:24s} {epochs:6d} {seconds / 60:5.1f}  {score['all_bones']:.4f}  {score['femur']:.3f}  "
              f"{score['tibia']:.3f}  {score['patella']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
