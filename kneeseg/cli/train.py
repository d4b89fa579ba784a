"""kneeseg_train FOLD: train one fold with the generic trainer (or a variant, -tr), driven by the plans.

FOLD is 0..k-1 or 'all'. With no -d it takes the one preprocessed dataset; with no -c the
configuration the plans recommend for the device (3d_cpu without a GPU). Runs under
`torchrun --nproc_per_node N` as DistributedDataParallel (gloo on CPU, nccl on GPUs).

--pretrained builtin|MODEL_DIR fine-tunes that model: its weights are the start (the dataset must be
planned with kneeseg_plan_and_preprocess --plans-from the same model), with a warm-up and, unless
--epochs or --time-budget-min say otherwise, a budget of 10 minutes (docs/finetuning.md). The new
model records its parent in model.json and README.md.
"""

from __future__ import annotations

import os

from kneeseg.api import train
from kneeseg.cli.common import add_path_flags, parser, paths_from, positive_float, positive_int
from kneeseg.errors import cli_entry
from kneeseg.hardware import resolve_device
from kneeseg.training.layout import TRAINER_NAME
from kneeseg.training.trainer import TrainOptions
from kneeseg.training.variants import TRAINERS


@cli_entry("kneeseg_train")
def main(argv=None):
    p = parser("kneeseg_train", __doc__)
    p.add_argument("fold", help="0..k-1 or all")
    p.add_argument("-d", "--dataset", help="dataset id or name (default: the only one)")
    p.add_argument("-c", "--configuration", help="configuration (default: recommended for the device)")
    p.add_argument("-p", "--plans", default="kneesegPlans", help="plans name (default kneesegPlans)")
    p.add_argument("-tr", "--trainer", default=TRAINER_NAME, choices=TRAINERS, metavar="TRAINER",
                   help=f"trainer: {', '.join(TRAINERS)} (default {TRAINER_NAME}; the others are variants, see docs/training.md)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--epochs", type=positive_int,
                   help="number of epochs (default: the plan's; with --time-budget-min: at most this many)")
    p.add_argument("--iters-per-epoch", type=positive_int, help="training iterations per epoch (default: the plan's)")
    p.add_argument("--val-iters", type=positive_int, help="validation batches per epoch (default: the plan's)")
    p.add_argument("--time-budget-min", type=positive_float,
                   help="wall-clock budget; the schedule is scaled to fit it (never beyond --epochs)")
    p.add_argument("--pretrained", metavar="MODEL", help="fine-tune this model ('builtin' or a model folder) instead of "
                   "training from random weights; plan with kneeseg_plan_and_preprocess --plans-from MODEL first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, help="background augmentation processes (default: 1 on a 2-15-core CPU, "
                   "none on 1 core, cores-1 up to 8 for a GPU; 0: none)")
    p.add_argument("--autocast", choices=["none", "bf16", "fp16"], help="mixed precision (default: the plan's)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--continue", dest="resume", action="store_true", help="resume from the latest checkpoint")
    start.add_argument("--overwrite", action="store_true", help="start again in a fold folder that holds a training")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_path_flags(p)
    args = p.parse_args(argv)
    options = TrainOptions(
        epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
        time_budget_min=args.time_budget_min, seed=args.seed, device=resolve_device(args.device),
        num_workers=args.num_workers, resume=args.resume, overwrite=args.overwrite, autocast=args.autocast,
        distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1,  # set by torchrun
        progress=args.progress, pretrained=args.pretrained,
    )
    result = train(paths_from(args), args.fold, args.dataset, args.configuration, args.plans, options, trainer=args.trainer)
    if result.main_process:
        dice = ", ".join(f"{d:.3f}" for d in result.final_pseudo_dice)
        print(f"trained {result.epochs} epochs: best EMA pseudo-Dice {result.best_ema_dice:.4f}, last [{dice}], "
              f"data wait {100 * result.data_wait_fraction:.1f}% -> {result.fold_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
