"""Benchmark: import the real KneeBones3Dify scan, then plan and preprocess it (issue: data to plans).

Prints the label counts of the import, and wall time and peak RSS of each step. The target is
plan + preprocess in under 30 s on the 2-core reference machine.

    python benchmarks/plan_and_preprocess_real.py [--shared ../shared/data/KneeBones3Dify]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command, run_measured  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "KneeBones3Dify")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--raw", f"{tmp}/raw", "--preprocessed", f"{tmp}/pre", "--results", f"{tmp}/res"]
        t_imp, rss_imp, rc = run_measured(kneeseg_command(
            "import_kneebones3dify", str(args.shared / "knee_0000.nii.gz"), "--mask", str(args.shared / "knee_bone.nii.gz"), *flags))
        assert rc == 0, "import failed"
        t_pp, rss_pp, rc = run_measured(kneeseg_command("plan_and_preprocess", "--device", "cpu", "--no-progress", *flags))
        assert rc == 0, "plan_and_preprocess failed"
    print(f"date {date.today()}  machine {platform.node()} ({platform.processor() or platform.machine()}), python {platform.python_version()}")
    print(f"import_kneebones3dify : {t_imp:6.1f} s  peak RSS {rss_imp:7.0f} MB")
    print(f"plan_and_preprocess   : {t_pp:6.1f} s  peak RSS {rss_pp:7.0f} MB  (target < 30 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
