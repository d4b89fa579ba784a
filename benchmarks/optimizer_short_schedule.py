"""Benchmark: which optimizer learns in a CPU-sized schedule (why 3d_cpu plans use AdamW).

Trains fold 0 of a small phantom (4 knees, 48^3 at 2.5 mm) for the same number of iterations with
nnU-Net's SGD (Nesterov, momentum 0.99, lr 1e-2) and with AdamW (lr 1e-3), both with poly decay,
and prints the last epochs' validation pseudo-Dice per bone.

    python benchmarks/optimizer_short_schedule.py [--epochs 30] [--iters 10] [--autocast bf16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command, run_measured  # noqa: E402

from kneeseg.training.checkpoint import load_checkpoint  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--autocast", default="bf16")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--raw", f"{tmp}/raw", "--preprocessed", f"{tmp}/pre"]
        run_measured(kneeseg_command("synth", "-o", f"{tmp}/raw/Dataset900_KneePhantom", "-n", "4", "--shape", "48", "48", "48",
                                     "--spacing", "2.5", "2.5", "2.5"))
        run_measured(kneeseg_command("plan_and_preprocess", "--device", "cpu", "--no-progress", *flags, "--results", f"{tmp}/r"))
        for optimizer in ("sgd", "adamw"):
            seconds, _, rc = run_measured(kneeseg_command(
                "train", "0", "--device", "cpu", "--optimizer", optimizer, "--epochs", str(args.epochs), "--iters-per-epoch",
                str(args.iters), "--val-iters", "4", "--autocast", args.autocast, "--no-progress", *flags, "--results", f"{tmp}/{optimizer}"))
            assert rc == 0, f"training with {optimizer} failed"
            ckpt = next(Path(tmp, optimizer).rglob("checkpoint_final.pth"))
            dice = np.array(load_checkpoint(ckpt)["history"]["pseudo_dice"])[-3:].mean(0)
            print(f"{optimizer:6s} {args.epochs * args.iters} iterations, {seconds:5.0f} s: pseudo-Dice (last 3 epochs) "
                  f"femur {dice[0]:.3f} tibia {dice[1]:.3f} patella {dice[2]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
