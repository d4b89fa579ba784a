"""The main job on the embedded default data (``make demo``): no download, CPU only.

Synthesises the reference phantom dataset, then plans and preprocesses it, and reports what the
planner decided and where everything is.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from kneeseg.paths import KneesegPaths
from kneeseg.reference import PHANTOM_DATASET, REFERENCE_HARDWARE, make_phantom_dataset
from kneeseg.preprocessing.pipeline import plan_and_preprocess


def run_demo(output: Path) -> dict:
    paths = KneesegPaths(output / "raw", output / "preprocessed", output / "results")
    timings = {}
    t = time.perf_counter()
    if (paths.raw / PHANTOM_DATASET).exists():
        shutil.rmtree(paths.raw / PHANTOM_DATASET)
    make_phantom_dataset(paths.raw, progress=True)
    timings["synthesise"] = time.perf_counter() - t
    t = time.perf_counter()
    result = plan_and_preprocess(paths, PHANTOM_DATASET, device="cpu", hardware=REFERENCE_HARDWARE)
    timings["plan_and_preprocess"] = time.perf_counter() - t
    config = result.plans.configuration(result.plans.recommended_configuration("cpu"))
    print("\n== kneeseg demo ==")
    print(f"dataset      : {paths.raw / PHANTOM_DATASET}")
    print(f"plans        : {result.plans_path}")
    print(f"CPU config   : {config.name}: spacing {config.spacing} mm, patch {config.patch_size}, batch {config.batch_size}, "
          f"{config.network.num_stages} stages, ~{config.estimate.seconds_per_iteration} s/iteration")
    for name, folder in result.cache_dirs.items():
        print(f"preprocessed : {folder}")
    for step, seconds in timings.items():
        print(f"time {step:<20s} {seconds:6.1f} s")
    return {"paths": paths, "plans": result.plans, "timings": timings}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kneeseg.demo", description=__doc__)
    p.add_argument("--output", type=Path, default=Path("demo_output"))
    args = p.parse_args(argv)
    run_demo(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
