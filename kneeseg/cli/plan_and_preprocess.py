"""kneeseg_plan_and_preprocess: fingerprint a raw dataset, write its plans, cache preprocessed data.

With no -d it takes the one dataset in the raw folder. The plans hold the GPU configurations
(3d_fullres, and 3d_lowres for large scans) and the CPU configuration (3d_cpu); only the one
recommended for --device is preprocessed unless -c names others.

The 3d_cpu configuration is sized for this machine: the cores this process may use and the measured
speed of a real training step in fp32 and bf16 (a few seconds), for --cpu-training-hours of training.
--machine reference plans for the project's reference machine instead (the same plans everywhere);
--cpu-threads, --cpu-gflops and --cpu-precision replace what was measured. A machine measured while
other work kept its cores busy is recorded as such, with a warning.

--plans-from builtin|MODEL_DIR plans the dataset with that model's configuration as it is (spacing,
patch, network, normalisation, its machine record), so that kneeseg_train --pretrained can fine-tune
the model on it; a model with other channels or labels than the dataset's is refused.
"""

from __future__ import annotations

from kneeseg.api import PlanOptions, plan_and_preprocess
from kneeseg.cli.common import add_path_flags, parser, paths_from, positive_float, positive_int
from kneeseg.errors import cli_entry, warn
from kneeseg.hardware import detect_device
from kneeseg.planning.machine import PROFILES, MachineProfile
from kneeseg.preprocessing.pipeline import PlanAndPreprocessResult


@cli_entry("kneeseg_plan_and_preprocess")
def main(argv=None):
    p = parser("kneeseg_plan_and_preprocess", __doc__)
    p.add_argument("-d", "--dataset", nargs="*", help="dataset id(s) or name(s); default: the only one")
    p.add_argument("-c", "--configurations", nargs="+", help="configurations to preprocess (default: recommended for --device)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="machine to plan the default configuration for")
    p.add_argument("--gpu-memory-gb", type=positive_float, default=8.0, help="GPU memory budget for cuda configurations (default 8)")
    p.add_argument("--machine", choices=["measure", *PROFILES],
                   help="size 3d_cpu for this machine, measured, or for a named profile (default: the machine recorded in "
                        "the dataset's existing plans, else measured)")
    p.add_argument("--cpu-threads", type=positive_int, help="measure on this many threads, to plan for a training that will "
                   "have that many (default: the cores this process may use; training uses the cores it finds)")
    p.add_argument("--cpu-gflops", type=positive_float, help="training-step throughput in GFLOP/s instead of measuring it")
    p.add_argument("--cpu-precision", choices=["bf16", "fp32"], help="CPU training precision instead of the faster one measured")
    p.add_argument("--cpu-training-hours", type=positive_float, default=1.0, help="CPU training time 3d_cpu is sized for (default 1)")
    p.add_argument("--cpu-spacing", type=positive_float, nargs="+", metavar="MM",
                   help="spacing of the 3d_cpu configuration instead of the planner's choice: one value (isotropic) "
                        "or three (z y x, the order of the plans); its patch and widths are still sized for the machine")
    p.add_argument("--plans-from", metavar="MODEL", help="take the configuration of this model ('builtin' or a model "
                   "folder) as it is, to fine-tune it on this dataset (kneeseg_train --pretrained)")
    p.add_argument("--plans-name", default="kneesegPlans")
    p.add_argument("-np", "--num-processes", type=positive_int, default=1, help="parallel workers (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for intensity and foreground-location sampling")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the dataset checks")
    p.add_argument("--plan-only", action="store_true", help="write fingerprint and plans, do not preprocess")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_path_flags(p)
    args = p.parse_args(argv)
    if args.cpu_spacing is not None and len(args.cpu_spacing) not in (1, 3):
        p.error(f"--cpu-spacing takes one value or three (z y x), not {len(args.cpu_spacing)}")
    cpu_spacing = args.cpu_spacing * 3 if args.cpu_spacing is not None and len(args.cpu_spacing) == 1 else args.cpu_spacing
    device = detect_device() if args.device == "auto" else args.device
    options = PlanOptions(
        device=device, configurations=args.configurations, machine=args.machine, cpu_threads=args.cpu_threads,
        cpu_gflops=args.cpu_gflops, cpu_precision={"fp32": "none", "bf16": "bf16", None: None}[args.cpu_precision],
        gpu_memory_gb=args.gpu_memory_gb, cpu_training_hours=args.cpu_training_hours, cpu_spacing=cpu_spacing,
        plans_name=args.plans_name, num_processes=args.num_processes, seed=args.seed, verify=args.verify,
        preprocess=not args.plan_only, progress=args.progress, plans_from=args.plans_from,
    )

    def on_machine(machine: MachineProfile, recorded: bool) -> None:
        if recorded:
            print(f"machine: as recorded in the existing plans ({machine.describe()}); --machine measure measures again")
        else:
            print(f"machine: {machine.describe()}")
        if machine.busy:
            warn(f"the machine was busy when it was measured ({machine.busy}): 3d_cpu is planned for a slower machine; "
                 "plan again when it is idle (--machine measure) or give --cpu-gflops")

    def on_planned(result: PlanAndPreprocessResult) -> None:
        for name, config in result.plans.configurations.items():
            mark = " (recommended for " + device + ")" if name == result.plans.recommended_configuration(device) else ""
            print(f"{result.dataset_name} {name}{mark}: spacing {config.spacing} mm, patch {config.patch_size}, "
                  f"batch {config.batch_size}, {config.network.num_stages} stages, "
                  f"~{config.estimate.seconds_per_iteration} s/iter on {config.device}"
                  + (f", {config.training.num_epochs} epochs" if config.device == "cpu" else ""))
        print(f"plans: {result.plans_path}")
        for name, folder in result.cache_dirs.items():
            print(f"preprocessed {name}: {folder}")

    plan_and_preprocess(paths_from(args), args.dataset, options, on_machine, on_planned)
    return 0
