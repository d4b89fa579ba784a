"""The main job on the embedded default data (``make demo``): no download, CPU only, < 15 minutes.

Synthesises the reference phantom dataset (6 training + 2 held-out knees), plans and preprocesses
it, trains fold 0 of the CPU configuration within a time budget, chooses post-processing on the
fold's validation case, predicts the held-out knees, evaluates them, exports STL bones and QC
overlays, and prints a short report (also written to ``report.txt``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from kneeseg import api
from kneeseg.io import atomic_write_text
from kneeseg.paths import KneesegPaths
from kneeseg.preprocessing.pipeline import plan_and_preprocess
from kneeseg.reference import PHANTOM_DATASET, REFERENCE_HARDWARE, make_phantom_dataset
from kneeseg.training.trainer import TrainOptions


def run_demo(output: Path, train_minutes: float = 9.0, seed: int = 0, progress: bool = True) -> dict:
    output = Path(output)
    paths = KneesegPaths(output / "raw", output / "preprocessed", output / "results")
    for folder in (paths.raw / PHANTOM_DATASET, paths.preprocessed / PHANTOM_DATASET, paths.results / PHANTOM_DATASET):
        shutil.rmtree(folder, ignore_errors=True)  # the demo always starts afresh
    timings: dict[str, float] = {}

    def step(name, fn, *args, **kwargs):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return result

    step("synthesise phantoms", make_phantom_dataset, paths.raw, progress=progress)
    prep = step("plan and preprocess", plan_and_preprocess, paths, PHANTOM_DATASET, device="cpu",
                hardware=REFERENCE_HARDWARE, seed=seed, progress=progress)
    options = TrainOptions(time_budget_min=train_minutes, seed=seed, device="cpu", progress=progress)
    trained = step("train fold 0", api.train, paths, "0", PHANTOM_DATASET, options=options)
    post = step("choose post-processing", api.find_postprocessing, paths, PHANTOM_DATASET, progress=progress)
    raw = paths.raw / PHANTOM_DATASET
    predictions = step("predict held-out knees", api.predict, raw / "imagesTs", output / "predictions", paths,
                       dataset=PHANTOM_DATASET, overlays=output / "overlays", progress=progress)
    summary = step("evaluate", api.evaluate, raw / "labelsTs", output / "predictions", output / "evaluation" / "summary.json",
                   overlays=output / "evaluation" / "overlays", images=raw / "imagesTs", progress=progress)
    meshes = step("export STL bones", api.export_stl, predictions[0], output / "stl")

    config = prep.plans.configuration(prep.plans.recommended_configuration("cpu"))
    lines = [
        "kneeseg demo report",
        f"configuration   {config.name}: spacing {config.spacing} mm, patch {config.patch_size}, "
        f"{config.training.optimizer}, {trained.epochs} epochs x {config.training.iterations_per_epoch} iterations",
        f"training        best EMA pseudo-Dice {trained.best_ema_dice:.3f}, data wait {100 * trained.data_wait_fraction:.1f}%",
        f"post-processing {', '.join(s['op'] + (' ' + str(s['label']) if 'label' in s else '') for s in post['steps']) or 'none'}",
        "held-out knees  (mean over cases)",
    ]
    for name, m in summary["mean"].items():
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kneeseg.demo", description=__doc__)
    p.add_argument("--output", type=Path, default=Path("demo_output"))
    p.add_argument("--train-minutes", type=float, default=9.0, help="training time budget (default 9)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run_demo(args.output, args.train_minutes, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
