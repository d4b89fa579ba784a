"""Build the built-in model: ``make model`` (``python -m kneeseg.models.build --shared DIR``).

1. Import the whole KneeBones3Dify scan (femur, tibia, patella) as Dataset901_KneeBones3Dify; DIR is
   ../shared/data/KneeBones3Dify or the folder of the Zenodo download (knee_0000.nii.gz, knee_bone.nii.gz).
2. Plan it for this machine (measured, as kneeseg_plan_and_preprocess does), or for the machine
   recorded in --machine-from PLANS (the kneesegPlans.json of the holdout run, so that both runs plan
   with the same profile, whatever this machine measures today), and preprocess.
3. Train fold 0 with --trainer (default: the default trainer; ``make model-any-contrast``: the
   any-contrast second reader, kneeseg.models) for --train-minutes (default 60: the budget of the
   held-out figures, where a 2-core CPU reaches ~50 epochs and the held-out Dice has levelled off)
   with --seed (default 0). The one scan is the fold's training and validation case.
4. Choose the post-processing on that fold's prediction of the scan.
5. Keep the network's weights only, in half precision (kneeseg.inference.archive), with plans.json,
   dataset.json, model.json, postprocessing.json and MODEL_CARD.md, in kneeseg/models/kneebones3dify/
   (--output; ``make model-any-contrast``: kneeseg/models/kneebones3dify_any_contrast/).
6. Print the model's Dice on its own training scan: an integrity figure, never a generalisation claim.

--holdout-summary takes the summary JSON of a benchmarks/kneebones3dify_holdout.py run of the same
recipe, budget and seed (train on half A, evaluate half B: ``WORKDIR/summary_A_to_B.json``); its
figures go into the model card as printed there. The card names files by the commands that make them
(``WORKDIR/...``), never by where they lay on the building machine, and every figure in it by the
command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from kneeseg import __version__
from kneeseg.api import evaluate, export_model, find_postprocessing, install_model, machine_profile, predict, train
from kneeseg.dataset.kneebones3dify import import_kneebones3dify
from kneeseg.errors import KneesegError, cli_entry
from kneeseg.hardware import precision_name
from kneeseg.inference.study import PredictionOptions
from kneeseg.models import ANY_CONTRAST_MODEL_DIR, BUILTIN_MODEL_DIR
from kneeseg.paths import KneesegPaths
from kneeseg.planning.machine import PROFILES, MachineProfile
from kneeseg.planning.plans import ConfigurationPlan, HardwareTarget, Plans
from kneeseg.preprocessing.pipeline import plan_and_preprocess
from kneeseg.training.layout import TRAINER_NAME
from kneeseg.training.trainer import TrainOptions
from kneeseg.training.variants import TRAINERS

CARD_TEMPLATE = Path(__file__).resolve().parent / "MODEL_CARD.template.md"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _figures(summary: dict, bones: list[str]) -> str:
    rows = ["| structure | Dice | HD95 (mm) | ASSD (mm) |", "| --- | --- | --- | --- |"]
    for name in [*bones, "all_bones"]:
        m = summary["mean"].get(name)
        if m is None or (m.get("ref_volume_mm3") == 0):
            continue
        rows.append(f"| {name.replace('_', ' ')} | {m['dice']:.4f} | {m['hd95']:.2f} | {m['assd']:.3f} |")
    return "\n".join(rows)


def _holdout_plan(plans_path: Path | None) -> str:
    """What the holdout run's plans made of half A (its network differs from the whole scan's when
    half A's shape gives another patch), or nothing without --machine-from."""
    if plans_path is None:
        return ""
    c = Plans.load(plans_path).configuration("3d_cpu")
    return (f"The holdout run planned half A for the same machine profile as {c.spacing[0]:.3f} mm, patch "
            f"{'x'.join(map(str, c.patch_size))}, widths {c.network.features_per_stage[0]}-{c.network.features_per_stage[-1]}: "
            "half A's shape gives the planner another patch and depth than the whole scan's, so these figures "
            "are of the recipe, not of this network.")


def _workdir_path(path: Path, parts: int) -> str:
    """``path`` by its last ``parts`` parts under the holdout run's WORKDIR: the same on every machine."""
    return "/".join(("WORKDIR", *path.parts[-parts:]))


# What each trainer's model is for, in the card: the default trainer's is the built-in model, the
# protocols trainer's its second reader (kneeseg.models).
ROLES = {
    TRAINER_NAME: ("", "kneeseg's default CPU recipe", "model",
                   f"Where this model stays unsure of a scan, as recorded and inverted, kneeseg_predict reads it again with "
                   f"the any-contrast second reader (kneeseg/models/{ANY_CONTRAST_MODEL_DIR.name}, its own card): the "
                   "non-monotonic row below then reads about 0.95, the second reader teaching this model the scan's contrast "
                   "(half-A models of both recipes, seed 1; benchmarks/RESULTS.md)."),
    "kneesegTrainerProtocols": (
        " (any-contrast second reader)",
        "kneeseg's CPU recipe with `kneesegTrainerProtocols`: the scan also shown under random contrasts "
        "(transfer functions and tissue intensities, each in 3 patches of 10) and fields of view (kneeseg/training/protocols.py)",
        "model-any-contrast",
        f"kneeseg_predict reads a scan with this model only where the built-in model (kneeseg/models/{BUILTIN_MODEL_DIR.name}) "
        "is unsure of more than 35 % of the bone it found, as recorded and inverted: a contrast it cannot read. "
        "It reads the scan as recorded and inverted and keeps the reading it is surer of. "
        "It reads the recorded contrast less well than the built-in model and other contrasts far better (the table below); "
        "its labels then teach the built-in model the scan's contrast, and the two readings are averaged (docs/prediction.md)."),
}


def build_command(minutes: float, seed: int, holdout_summary: Path | None, machine_from: Path | None,
                  robustness: Path | None = None, trainer: str = TRAINER_NAME) -> str:
    """The ``make model`` (or ``make model-any-contrast``) line that builds this model again."""
    line = f"make {ROLES[trainer][2]} MODEL_MINUTES={minutes:g} MODEL_SEED={seed}"
    if holdout_summary is not None:
        line += f" HOLDOUT={_workdir_path(holdout_summary, 1)}"
    if machine_from is not None:  # WORKDIR/pre/DatasetNNN_Name/kneesegPlans.json
        line += f" MACHINE_FROM={_workdir_path(machine_from, 3)}"
    if robustness is not None:
        line += f" ROBUSTNESS={_workdir_path(robustness, 1)}"
    return line


ROBUSTNESS_COMMAND = "python benchmarks/robustness_real.py --workdir WORKDIR --eval-half B --table WORKDIR/{name}"


def _robustness(table: Path | None) -> str:
    """The card's section on half B as other protocols would record it: the robustness benchmark's table."""
    if table is None:
        return "(not given to this build: see benchmarks/RESULTS.md)"
    return (f"`{ROBUSTNESS_COMMAND.format(name=table.name)}` predicts versions of half B made as other acquisitions "
            f"would record it and counts the bone invented where the reference has none (half B has no patella):\n\n"
            + table.read_text(encoding="utf-8").strip())


def holdout_command(minutes: float, seed: int, machine: MachineProfile | None, trainer: str = TRAINER_NAME) -> str:
    """The benchmark line whose half-B figures the card gives: same budget, seed, machine profile and trainer."""
    named = f" --machine {machine.name}" if machine is not None and machine.name in PROFILES else ""
    named += f" -tr {trainer}" if trainer != TRAINER_NAME else ""
    return f"python benchmarks/kneebones3dify_holdout.py --budget-min {minutes:g} --seed {seed}{named} --workdir WORKDIR"


def model_card(machine: MachineProfile, config: ConfigurationPlan, bones: list[str], epochs: int, own_dice: float,
               minutes: float, seed: int, holdout_summary: Path | None = None, machine_from: Path | None = None,
               robustness: Path | None = None, trainer: str = TRAINER_NAME) -> str:
    """MODEL_CARD.md of a model built with these settings (the template filled in)."""
    held_out = json.loads(holdout_summary.read_text(encoding="utf-8")) if holdout_summary else None
    recorded = Plans.load(machine_from).hardware.machine if machine_from else None
    title, recipe, _, role = ROLES[trainer]
    return CARD_TEMPLATE.read_text(encoding="utf-8").format(
        title=title, recipe=recipe, role=role, version=__version__, commit=_commit(), date=date.today(), machine=machine.name, cpu=machine.cpu_model,
        cores=machine.cpu_cores, gflops=machine.cpu_gflops,
        precision=precision_name(machine.cpu_precision), minutes=minutes, seed=seed,
        epochs=epochs, spacing=config.spacing[0], patch="x".join(map(str, config.patch_size)),
        widths=f"{config.network.features_per_stage[0]}-{config.network.features_per_stage[-1]}",
        own_dice=own_dice, python=platform.python_version(),
        build_command=build_command(minutes, seed, holdout_summary, machine_from, robustness, trainer),
        holdout_command=holdout_command(minutes, seed, recorded, trainer),
        held_out_file=_workdir_path(holdout_summary, 1) if holdout_summary else "WORKDIR/summary_A_to_B.json",
        held_out=_figures(held_out, bones) if held_out else "(not given to this build: see benchmarks/RESULTS.md)",
        holdout_plan=_holdout_plan(machine_from), robustness=_robustness(robustness),
    )


def build(shared: Path, out: Path, minutes: float, seed: int, holdout_summary: Path | None, progress: bool = True,
          machine_from: Path | None = None, robustness: Path | None = None, trainer: str = TRAINER_NAME) -> Path:
    if trainer not in ROLES:
        raise KneesegError(f"--trainer {trainer}: a built-in model is built with one of {', '.join(ROLES)}")
    extra = [f for f in (holdout_summary, machine_from, robustness) if f is not None]
    for needed in (shared / "knee_0000.nii.gz", shared / "knee_bone.nii.gz", *extra):
        if not needed.is_file():  # refused now, not after an hour of training
            raise KneesegError(f"{needed}: not found (--shared: the KneeBones3Dify scan and mask; --holdout-summary, "
                               "--machine-from: JSON files; --robustness: a Markdown table)")
    if minutes <= 0:
        raise KneesegError(f"--train-minutes {minutes:g}: must be positive")
    recorded = Plans.load(machine_from).hardware.machine if machine_from else None  # unreadable: refused now
    with tempfile.TemporaryDirectory() as tmp:
        paths = KneesegPaths(Path(tmp, "raw"), Path(tmp, "pre"), Path(tmp, "res"))
        dataset = import_kneebones3dify(shared / "knee_0000.nii.gz", paths.raw, mask=shared / "knee_bone.nii.gz").dataset_dir
        machine = recorded or machine_profile()
        plans = plan_and_preprocess(paths, dataset.name, hardware=HardwareTarget(machine), seed=seed, progress=progress).plans
        result = train(paths, "0", dataset.name, options=TrainOptions(time_budget_min=minutes, seed=seed, device="cpu", progress=progress),
                       trainer=trainer)
        find_postprocessing(paths, dataset.name, progress=progress)
        scan, labels = dataset / "imagesTr" / "knee_0000.nii.gz", dataset / "labelsTr" / "knee.nii.gz"
        predict(scan, Path(tmp, "self.nii.gz"), model_dir=result.model_dir, options=PredictionOptions(progress=progress))
        own = evaluate(labels, Path(tmp, "self.nii.gz"), Path(tmp, "self.json"), progress=False)["mean"]
        card = model_card(machine, plans.configuration("3d_cpu"), list(plans.labels)[1:], result.epochs, own["all_bones"]["dice"],
                          minutes, seed, holdout_summary, machine_from, robustness, trainer)
        (result.model_dir / "MODEL_CARD.md").write_text(card, encoding="utf-8")
        archive = Path(tmp, "model.zip")
        export_model(result.model_dir, archive, ["0"], half=True)
        installed = install_model(archive, KneesegPaths(paths.raw, paths.preprocessed, Path(tmp, "installed")))
        staged = out.with_name(f".{out.name}.new")  # the old model stays whole until the new one is complete
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(installed, staged)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    print(f"built-in model ({trainer}): {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB), "
          f"{result.epochs} epochs in {minutes:g} min; all-bone Dice on its own training scan {own['all_bones']['dice']:.4f} "
          "(integrity, not generalisation)")
    return out


@cli_entry("kneeseg.models.build")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data/KneeBones3Dify"))
    p.add_argument("--train-minutes", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-summary", type=Path, help="summary_A_to_B.json of a holdout benchmark run of this recipe")
    p.add_argument("--machine-from", type=Path, metavar="PLANS",
                   help="plan for the machine recorded in this kneesegPlans.json (the holdout run's) instead of measuring")
    p.add_argument("--robustness", type=Path, metavar="TABLE",
                   help="the holdout run's robustness table (benchmarks/robustness_real.py --table) for the model card")
    p.add_argument("--trainer", default=TRAINER_NAME, choices=[t for t in TRAINERS if t in ROLES],
                   help="the default trainer: the built-in model; kneesegTrainerProtocols: its any-contrast second reader")
    p.add_argument("--output", type=Path, default=BUILTIN_MODEL_DIR)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    build(args.shared, args.output, args.train_minutes, args.seed, args.holdout_summary, args.progress, args.machine_from,
          args.robustness, args.trainer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
