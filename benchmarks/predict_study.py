"""Benchmark: a study of many scans predicted by one command against one command per scan.

Synthesises phantom knees (4 training cases and --scans held-out scans), plans them for the
reference machine profile and trains fold 0 for a moment (the model's quality is not what is
measured here), then predicts the held-out scans twice: with one kneeseg_predict over the folder
(the model loaded once; study.csv records each case) and with one kneeseg_predict per scan. Prints
wall time, scans per minute and peak RSS of each way.

    python benchmarks/predict_study.py [--scans 20] [--shape 96 96 96] [--workdir DIR]

--real: the study is --scans copies of the real scan (512x512x286, ../shared) under other names,
predicted by the built-in model as on a fresh install (issue 39: no slower per scan than a single
scan); the one-command-per-scan way is then one single scan, for the time per scan.

    python benchmarks/predict_study.py --real [--scans 20] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import kneeseg_command, run_measured  # noqa: E402

from kneeseg.hardware import cpu_model  # noqa: E402

DATASET = "Dataset900_KneePhantom"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int, default=20)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--workdir", type=Path)
    p.add_argument("--real", action="store_true", help="copies of the real scan, the built-in model")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "KneeBones3Dify")
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    if args.real:
        return real_study(args.shared / "knee_0000.nii.gz", args.scans, work)
    flags = ["--raw", str(work / "raw"), "--preprocessed", str(work / "pre"), "--results", str(work / "res")]
    steps = [
        kneeseg_command("synth", "-o", str(work / "raw" / DATASET), "-n", "4", "--num-test", str(args.scans),
                        "--shape", *map(str, args.shape)),
        kneeseg_command("plan_and_preprocess", "--device", "cpu", "--machine", "reference", "--no-progress", *flags),
        kneeseg_command("train", "0", "--device", "cpu", "--epochs", "2", "--iters-per-epoch", "5", "--val-iters", "1",
                        "--no-progress", *flags),
    ]
    for command in steps:
        _, _, rc = run_measured(command)
        assert rc == 0, f"{command[3:5]} failed"
    scans = sorted((work / "raw" / DATASET / "imagesTs").iterdir())
    common = ["--device", "cpu", "--no-progress", *flags]
    one_s, one_rss, rc = run_measured(kneeseg_command("predict", "-i", str(scans[0].parent), "-o", str(work / "one"), *common))
    assert rc == 0, "the study command failed"
    each_s, each_rss = 0.0, 0.0
    for scan in scans:
        seconds, rss, rc = run_measured(kneeseg_command("predict", "-i", str(scan), "-o", str(work / "each" / scan.name), *common))
        assert rc == 0, f"{scan.name} failed"
        each_s, each_rss = each_s + seconds, max(each_rss, rss)
    print(f"{date.today()}, {cpu_model()}: {len(scans)} phantom scans of {'x'.join(map(str, args.shape))} voxels, mirror TTA")
    print("| how | wall time | scans per minute | peak RSS |\n| --- | --- | --- | --- |")
    print(f"| one command for the folder | {one_s:.1f} s | {60 * len(scans) / one_s:.1f} | {one_rss:.0f} MB |")
    print(f"| one command per scan | {each_s:.1f} s | {60 * len(scans) / each_s:.1f} | {each_rss:.0f} MB |")
    return 0


def real_study(scan: Path, count: int, work: Path) -> int:
    """``count`` copies of ``scan`` predicted by the built-in model: one command for the folder, and one for a single scan."""
    folder = work / "scans"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        copy = folder / f"knee_{i:03d}_0000.nii.gz"
        if not copy.exists():
            shutil.copyfile(scan, copy)
    common = ["-m", "builtin", "--device", "cpu", "--no-progress", "--overwrite"]
    one_s, one_rss, rc = run_measured(kneeseg_command("predict", "-i", str(folder), "-o", str(work / "one"), *common))
    assert rc == 0, "the study command failed"
    single_s, single_rss, rc = run_measured(kneeseg_command("predict", "-i", str(folder / "knee_000_0000.nii.gz"),
                                                            "-o", str(work / "single.nii.gz"), *common))
    assert rc == 0, "the single scan failed"
    print(f"{date.today()}, {cpu_model()}: {count} copies of the real scan (512x512x286), the built-in model, mirror TTA")
    print("| how | wall time | per scan | scans per minute | peak RSS |\n| --- | --- | --- | --- | --- |")
    print(f"| one command for the folder | {one_s:.1f} s | {one_s / count:.1f} s | {60 * count / one_s:.1f} | {one_rss:.0f} MB |")
    print(f"| one command, one scan | {single_s:.1f} s | {single_s:.1f} s | {60 / single_s:.1f} | {single_rss:.0f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
