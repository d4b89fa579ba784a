"""Benchmark: the demo's CPU training on the reference phantom, with its figures.

Runs the whole demo (synthesise, plan, train fold 0 of 3d_cpu within --train-minutes, choose
post-processing, predict and evaluate the two held-out knees) and prints the last epoch's validation
pseudo-Dice per bone next to the held-out Dice. Target: pseudo-Dice > 0.85 for all three bones.

    python benchmarks/train_phantom.py [--train-minutes 8.5] [--machine measure|reference] [--output DIR]
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

from kneeseg.demo import DEMO_TRAIN_MINUTES, run_demo


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train-minutes", type=float, default=DEMO_TRAIN_MINUTES)
    p.add_argument("--output", type=Path, default=Path("/tmp/kneeseg_phantom_benchmark"))
    p.add_argument("--machine", default="measure", help="plan for this machine, measured (as make demo), or 'reference'")
    args = p.parse_args()
    result = run_demo(args.output, args.train_minutes, progress=False, machine=args.machine)
    history = result["training"].history
    names = ["femur", "tibia", "patella"]
    print(f"\ndate {date.today()}  machine {platform.node()}  training budget {args.train_minutes} min, "
          f"{result['training'].epochs} epochs in {result['timings']['train fold 0'] / 60:.1f} min")
    print("last-epoch validation pseudo-Dice: " + ", ".join(f"{n} {d:.3f}" for n, d in zip(names, history["pseudo_dice"][-1])))
    print("held-out Dice:                     " + ", ".join(f"{n} {result['summary']['mean'][n]['dice']:.3f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
