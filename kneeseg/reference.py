"""The reference datasets whose plans are kept in ``plans/`` so that a reader can see what the
planner decides, and a test can fail when they drift.

- ``Dataset900_KneePhantom``: the default phantom set (what ``make demo`` synthesises);
- ``Dataset901_KneeBones3Dify``: the real 0.3 T scan imported from ../shared (when present).

``python -m kneeseg.reference --write plans`` regenerates them; ``--check plans`` compares.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kneeseg.dataset.kneebones3dify import import_kneebones3dify
from kneeseg.dataset.phantom import PhantomOptions, synthesize_dataset
from kneeseg.paths import KneesegPaths
from kneeseg.planning.plans import HardwareTarget, Plans
from kneeseg.preprocessing.pipeline import plan_and_preprocess

PHANTOM_DATASET = "Dataset900_KneePhantom"
PHANTOM_CASES = 6
PHANTOM_TEST_CASES = 2
PHANTOM_SEED = 0
REAL_DATASET = "Dataset901_KneeBones3Dify"
REFERENCE_HARDWARE = HardwareTarget()  # the "reference" machine profile, 8 GB GPU, 1 h of CPU training


def make_phantom_dataset(raw: Path, options: PhantomOptions | None = None, progress: bool = False) -> Path:
    out = raw / PHANTOM_DATASET
    synthesize_dataset(out, PHANTOM_CASES, PHANTOM_SEED, options or PhantomOptions(), PHANTOM_TEST_CASES, progress=progress)
    return out


def import_real_dataset(raw: Path, shared: Path) -> Path:
    return import_kneebones3dify(shared / "knee_0000.nii.gz", raw, mask=shared / "knee_bone.nii.gz").dataset_dir


def reference_plans(workdir: Path, shared: Path | None) -> dict[str, Plans]:
    """Build the reference datasets under ``workdir`` and plan them (no preprocessing)."""
    paths = KneesegPaths(workdir / "raw", workdir / "preprocessed", workdir / "results")
    make_phantom_dataset(paths.raw)
    names = [PHANTOM_DATASET]
    if shared is not None and (shared / "knee_0000.nii.gz").exists():
        import_real_dataset(paths.raw, shared)
        names.append(REAL_DATASET)
    return {
        name: plan_and_preprocess(paths, name, hardware=REFERENCE_HARDWARE, preprocess=False, progress=False).plans
        for name in names
    }


def plans_file(folder: Path, dataset: str) -> Path:
    return folder / f"{dataset}.kneesegPlans.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="folder to write the reference plans to")
    mode.add_argument("--check", type=Path, help="folder whose plans must equal freshly generated ones")
    p.add_argument("--shared", type=Path, default=Path("../shared/data/KneeBones3Dify"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        plans = reference_plans(Path(tmp), args.shared)
    drift = 0
    for name, plan in plans.items():
        target = plans_file(args.write or args.check, name)
        if args.write:
            plan.save(target)
            print(f"wrote {target}")
        elif json.loads(target.read_text()) != json.loads(json.dumps(plan.to_dict())):
            print(f"{target}: differs from freshly generated plans")
            drift += 1
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
