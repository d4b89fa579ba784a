"""kneeseg_train FOLD: train one fold with the generic trainer, driven by the plans.

FOLD is 0..k-1 or 'all'. With no -d it takes the one preprocessed dataset; with no -c the
configuration the plans recommend for the device (3d_cpu without a GPU). Runs under
`torchrun --nproc_per_node N` as DistributedDataParallel (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

import argparse
import os

from kneeseg.cli.common import add_path_flags, paths_from, positive_float, positive_int, share
from kneeseg.errors import cli_entry
from kneeseg.hardware import resolve_device
from kneeseg.api import train
from kneeseg.training.trainer import TrainOptions


@cli_entry("kneeseg_train")
def main(argv=None):
    p = argparse.ArgumentParser(prog="kneeseg_train", description=__doc__)
    p.add_argument("fold", help="0..k-1 or all")
    p.add_argument("-d", "--dataset", help="dataset id or name (default: the only one)")
    p.add_argument("-c", "--configuration", help="configuration (default: recommended for the device)")
    p.add_argument("-p", "--plans", default="kneesegPlans", help="plans name (default kneesegPlans)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--epochs", type=positive_int,
                   help="number of epochs (default: the plan's; with --time-budget-min: at most this many)")
    p.add_argument("--iters-per-epoch", type=positive_int, help="training iterations per epoch (default: the plan's)")
    p.add_argument("--val-iters", type=positive_int, help="validation batches per epoch (default: the plan's)")
    p.add_argument("--time-budget-min", type=positive_float,
                   help="wall-clock budget; the schedule is scaled to fit it (never beyond --epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=1, help="background augmentation processes (default 1; 0: none)")
    p.add_argument("--autocast", choices=["none", "bf16", "fp16"], help="mixed precision (default: the plan's)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="optimizer (default: the plan's; its default lr)")
    p.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    p.add_argument("--remove-structures", type=share, default=0.0, metavar="SHARE",
                   help="share of training patches in which one labelled structure is replaced by the tissue "
                        "around it, so no structure is found only by its neighbours (default 0: off)")
    p.add_argument("--no-intensity-augmentation", dest="intensity_augmentation", action="store_false",
                   help="augment with spatial transforms and mirroring only (no noise, blur, contrast, gamma, low resolution)")
    p.add_argument("--soft-targets", choices=["on", "off"],
                   help="train against each label's share of a voxel (on) or the resampled labels (off); default: the plan's")
    p.add_argument("--average-last", type=share, metavar="SHARE",
                   help="final weights = mean over this last share of the epochs (0: the last epoch's); default: the plan's")
    p.add_argument("--continue", dest="resume", action="store_true", help="resume from the latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a fold folder that holds a training")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_path_flags(p)
    args = p.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun
    options = TrainOptions(
        epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
        time_budget_min=args.time_budget_min, seed=args.seed, device=resolve_device(args.device),
        num_workers=args.num_workers, resume=args.resume, overwrite=args.overwrite, autocast=args.autocast, optimizer=args.optimizer,
        elastic=args.elastic, remove_structures=args.remove_structures, intensity_augmentation=args.intensity_augmentation,
        distributed=distributed, progress=args.progress,
        soft_targets=None if args.soft_targets is None else args.soft_targets == "on", average_last=args.average_last,
    )
    result = train(paths_from(args), args.fold, args.dataset, args.configuration, args.plans, options)
    dice = ", ".join(f"{d:.3f}" for d in result.final_pseudo_dice)
    print(f"trained {result.epochs} epochs: best EMA pseudo-Dice {result.best_ema_dice:.4f}, last [{dice}], "
          f"data wait {100 * result.data_wait_fraction:.1f}% -> {result.fold_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
