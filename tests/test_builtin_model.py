"""The built-in model: used when nothing is trained, named with -m builtin, and its QC warnings for
scans unlike its training scans. The shipped weights, where this install has them, reproduce their
training scan (an integrity check, not a generalisation claim)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODEL_DIR, path_flags

import kneeseg.models
from kneeseg.cli.predict import main as predict_main
from kneeseg.inference.qc import prediction_warnings, uncertain_share
from kneeseg.io import Geometry, read_image, write_image
from kneeseg.models import builtin_model_dir
from kneeseg.planning.plans import Plans

DS = "Dataset900_KneePhantom"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "KneeBones3Dify"
BONES = {"femur": 1, "tibia": 2, "patella": 3}


def _scan(paths) -> Path:
    return paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"


def test_with_nothing_trained_the_builtin_model_is_used_and_named(phantom_builtin, small_model, tmp_path, capsys):
    out = tmp_path / "bones.nii.gz"
    empty = ["--results", str(tmp_path / "no_results"), "--raw", str(small_model.raw)]
    assert predict_main(["-i", str(_scan(small_model)), "-o", str(out), "--device", "cpu", "--no-progress", *empty]) == 0
    err = capsys.readouterr().err
    assert "no trained model in" in err and "using the built-in model" in err
    labels, geometry = read_image(out)
    _, scan_geometry = read_image(_scan(small_model))
    assert geometry.matches(scan_geometry) is None and set(np.unique(labels)) <= {0, 1, 2, 3}
    explicit = tmp_path / "explicit.nii.gz"
    assert predict_main(["-i", str(_scan(small_model)), "-o", str(explicit), "-m", "builtin", "--device", "cpu", "--no-progress"]) == 0
    assert np.array_equal(read_image(explicit)[0], labels)
    code = predict_main(["-i", str(_scan(small_model)), "-o", str(tmp_path / "x.nii.gz"), "-m", "builtin", "-d", "900"])
    assert code == 2 and "-m names the model folder; -d would be ignored" in capsys.readouterr().err


def test_without_a_builtin_model_the_error_says_so(small_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kneeseg.models, "BUILTIN_MODEL_DIR", tmp_path / "absent")
    args = ["-i", str(_scan(small_model)), "-o", str(tmp_path / "out.nii.gz"), "--device", "cpu", "--no-progress"]
    assert predict_main([*args, "--results", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained model found, and this install has no built-in model" in err[0]
    assert predict_main([*args, "-m", "builtin"]) == 2
    assert "-m builtin: this install has no built-in model" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


def _geometry(shape, spacing=1.0) -> Geometry:
    image = sitk.Image([shape[2], shape[1], shape[0]], sitk.sitkUInt8)
    image.SetSpacing([spacing] * 3)
    return Geometry.of(image)


def test_qc_names_missing_bones_odd_volumes_and_bones_out_of_order():
    labels = np.zeros((40, 40, 40), np.uint8)  # z runs superior (LPS +z) with an identity direction
    labels[22:34, 10:30, 10:30] = 1  # femur above
    labels[4:16, 10:30, 10:30] = 2  # tibia below
    labels[22:30, 2:8, 14:24] = 3  # patella anterior (smaller LPS y)
    geometry = _geometry(labels.shape)
    volumes = {name: float((labels == v).sum()) for name, v in BONES.items()}
    ranges = {name: [v, v] for name, v in volumes.items()}
    assert prediction_warnings(labels, geometry, BONES, ranges) == []
    upside_down = labels[::-1].copy()
    found = prediction_warnings(upside_down, geometry, BONES, ranges)
    assert any("femur is not superior to the tibia" in w for w in found)
    backwards = labels[:, ::-1].copy()
    assert any("patella is not anterior to the femur" in w for w in prediction_warnings(backwards, geometry, BONES, ranges))
    no_patella = np.where(labels == 3, 0, labels)
    assert prediction_warnings(no_patella, geometry, BONES, ranges) == ["no patella found, though every training label map had one"]
    assert prediction_warnings(no_patella, geometry, BONES, {**ranges, "patella": [0.0, volumes["patella"]]}) == []
    small = prediction_warnings(labels, geometry, BONES, {**ranges, "femur": [10 * volumes["femur"]] * 2})
    assert small == ["femur volume 4.8 ml lies far outside the training labels' 48.0-48.0 ml"]
    cut = labels.copy()
    cut[34:, 10:30, 10:30] = 1  # the femur reaches the top of the image: the field of view cut it
    assert prediction_warnings(cut, geometry, BONES, {**ranges, "femur": [10 * volumes["femur"]] * 2}) == []
    big = prediction_warnings(cut, geometry, BONES, {**ranges, "femur": [volumes["femur"] / 10] * 2})
    assert big == ["femur volume 7.2 ml lies far outside the training labels' 0.5-0.5 ml"]  # too large is judged still


def test_qc_is_quiet_on_real_anatomy_and_recorded_in_the_statistics(small_model, tmp_path, capsys):
    plans = Plans.load(small_model.results / MODEL_DIR / "plans.json")
    for label_file in sorted((small_model.raw / DS / "labelsTr").iterdir()):
        labels, geometry = read_image(label_file)
        assert prediction_warnings(labels, geometry, BONES, plans.label_volumes_mm3) == [], label_file
    out = tmp_path / "pred"
    capsys.readouterr()
    assert predict_main(["-i", str(small_model.raw / DS / "imagesTs"), "-o", str(out), "--statistics", "--device", "cpu",
                         "--no-progress", *path_flags(small_model)]) == 0
    err = capsys.readouterr().err.splitlines()
    for case in ("phantom_test_000", "phantom_test_001"):  # what stderr said of each scan is what its statistics hold
        prefix = f"kneeseg: warning: {small_model.raw / DS / 'imagesTs' / (case + '_0000.nii.gz')}: "
        stats = json.loads((out / f"{case}.statistics.json").read_text(encoding="utf-8"))
        assert stats["qc_warnings"] == [line[len(prefix):] for line in err if line.startswith(prefix)]


@pytest.mark.skipif(builtin_model_dir() is None or not (SHARED / "knee_0000.nii.gz").exists(),
                    reason="this install has no built-in model, or ../shared has no KneeBones3Dify scan")
def test_the_shipped_weights_reproduce_their_training_scan(tmp_path, capsys):
    folder = builtin_model_dir()
    assert folder is not None
    weights = sorted(folder.glob("fold_*/checkpoint_final.pth"))
    assert weights and sum(w.stat().st_size for w in weights) <= 15e6  # half precision, weights only
    out = tmp_path / "bones.nii.gz"
    assert predict_main(["-i", str(SHARED / "knee_0000.nii.gz"), "-o", str(out), "-m", "builtin", "--device", "cpu", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err  # its own training scan: no QC or acquisition warning
    # Read by SimpleITK, not kneeseg: all-bone Dice against the specialist's binary mask.
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED / "knee_bone.nii.gz"))) > 0
    bone = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    dice = 2 * np.count_nonzero(reference & bone) / (np.count_nonzero(reference) + np.count_nonzero(bone))
    assert dice > 0.95  # the model card records the figure


def test_make_model_refuses_missing_or_broken_inputs_before_training(tmp_path, capsys):
    from kneeseg.models.build import main as build_main

    out = tmp_path / "model"
    assert build_main(["--shared", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere" / "knee_0000.nii.gz") in err[0] and "not found" in err[0]
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("knee_0000.nii.gz", "knee_bone.nii.gz"):
        (shared / name).write_bytes(b"")  # never read: the broken plans are refused first
    broken = tmp_path / "kneesegPlans.json"
    broken.write_text('{"version": 3, "configurations": ', encoding="utf-8")
    assert build_main(["--shared", str(shared), "--machine-from", str(broken), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0]
    assert build_main(["--shared", str(shared), "--train-minutes", "0", "--output", str(out)]) == 2
    assert "--train-minutes 0: must be positive" in capsys.readouterr().err
    assert not out.exists()


def test_qc_says_when_the_model_is_unsure_of_the_bone_it_found():
    geometry = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    labels = np.zeros((8, 8, 8), np.uint8)
    probs = np.zeros((4, 8, 8, 8), np.float32)
    probs[0] = 1.0
    assert uncertain_share(probs) is None  # no bone found: nothing to be unsure of
    probs[:, 2:6, 2:6, 2:6] = np.array([0.03, 0.95, 0.01, 0.01])[:, None, None, None]
    labels[2:6, 2:6, 2:6] = 1
    assert uncertain_share(probs) == 0.0
    probs[:, 2:4, 2:6, 2:6] = np.array([0.35, 0.45, 0.1, 0.1])[:, None, None, None]  # half of it won narrowly
    assert uncertain_share(probs) == pytest.approx(0.5)
    quiet = prediction_warnings(labels, geometry, {"femur": 1}, {}, unsure=0.05)
    loud = prediction_warnings(labels, geometry, {"femur": 1}, {}, unsure=uncertain_share(probs))
    assert not any("unsure" in w for w in quiet)
    assert [w for w in loud if "unsure" in w] == [loud[0]] and "unsure of 50 % of the bone it found" in loud[0]
    inverted = prediction_warnings(labels, geometry, {"femur": 1}, {}, unsure=0.04, read_inverted=True, unsure_as_recorded=0.64)
    assert inverted == ["read with its contrast inverted: the model was unsure of 64 % of the bone it found as recorded, "
                        "and is unsure of 4 % inverted; check every bone"]
    nothing = prediction_warnings(labels, geometry, {"femur": 1}, {}, unsure=0.04, read_inverted=True)
    assert nothing[0].startswith("read with its contrast inverted: the model found no bone as recorded,")


@pytest.mark.skipif(builtin_model_dir() is None or not (SHARED / "knee_0000.nii.gz").exists(),
                    reason="this install has no built-in model, or ../shared has no KneeBones3Dify scan")
def test_the_builtin_model_is_sure_of_a_knee_reads_an_inverted_one_and_is_unsure_of_noise(tmp_path, capsys):
    """The knee as recorded: no warning. Its inverted contrast (dark fat, bright fluid, a contrast the
    model never learnt): read a second time inverted, the same bones as the knee's, and a warning that
    says so; with --no-inverted-retry the model is unsure of it. Noise: unsure either way."""
    from scan_variants import inverted, thick_slices

    image, geometry = read_image(SHARED / "knee_0000.nii.gz")
    knee, _, grid = thick_slices(image, None, geometry, (1.0, 1.0, 1.0))  # the scan at 1 mm: quick to predict
    rng = np.random.default_rng(0)
    scans = {"knee": knee, "noise": np.hypot(rng.normal(0, 300, knee.shape), rng.normal(0, 300, knee.shape)).astype(knee.dtype),
             "inverted": inverted(knee)}
    folder = tmp_path / "scans"
    for name, array in scans.items():
        write_image(array, grid, folder / f"{name}.nii.gz")
    out = tmp_path / "bones"
    assert predict_main(["-i", str(folder), "-o", str(out), "-m", "builtin", "--statistics", "--device", "cpu", "--no-progress"]) == 0
    warned = {name: json.loads((out / f"{name}.statistics.json").read_text())["qc_warnings"] for name in scans}
    assert not any("unsure" in w or "inverted" in w for w in warned["knee"]), warned["knee"]
    assert [w for w in warned["inverted"] if "unsure" in w or "inverted" in w] == [
        next(w for w in warned["inverted"] if w.startswith("read with its contrast inverted"))], warned["inverted"]
    assert any("unsure" in w for w in warned["noise"]) and not any("inverted" in w for w in warned["noise"]), warned["noise"]
    assert "read with its contrast inverted" in capsys.readouterr().err
    knee_bones, _ = read_image(out / "knee.nii.gz")
    inverted_bones, _ = read_image(out / "inverted.nii.gz")
    for value in (1, 2, 3):  # femur, tibia, patella: the bones of the knee as recorded
        a, b = knee_bones == value, inverted_bones == value
        assert 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)) > 0.9, value

    plain = tmp_path / "plain"
    assert predict_main(["-i", str(folder / "inverted.nii.gz"), "-o", str(plain / "inverted.nii.gz"), "-m", "builtin",
                         "--statistics", "--no-inverted-retry", "--device", "cpu", "--no-progress"]) == 0
    warned = json.loads((plain / "inverted.statistics.json").read_text())["qc_warnings"]
    assert any("unsure" in w for w in warned) and not any("inverted" in w for w in warned), warned


ABSOLUTE_PATH = re.compile(r"(?:^|[\s(`'\"=])(?:/|[A-Za-z]:\\)\w")  # /home/..., C:\Users\...


def test_the_model_card_names_commands_not_the_building_machines_paths(tmp_path):
    """The card's files are named under the holdout run's WORKDIR and each figure by its command;
    the shipped card too."""
    from kneeseg.models.build import model_card

    workdir = tmp_path / "bench_runs" / "measured"  # where the files lay on the building machine
    machine_from = workdir / "pre" / "Dataset902_KneeHalfA" / "kneesegPlans.json"
    machine_from.parent.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "plans" / f"{DS}.kneesegPlans.json", machine_from)
    figures = {"dice": 0.9732, "hd95": 1.05, "assd": 0.337, "ref_volume_mm3": 1.0}
    holdout = workdir / "summary_A_to_B.json"
    holdout.write_text(json.dumps({"mean": {"femur": figures, "tibia": figures, "all_bones": figures}}))
    plans = Plans.load(machine_from)
    table = workdir / "robustness_B.md"
    table.write_text("| version | all bones |\n| --- | --- |\n| inverted contrast | 0.951 |\n")
    card = model_card(plans.hardware.machine, plans.configuration("3d_cpu"), list(BONES), 12, 0.9842, 60, 3, holdout, machine_from, table)
    assert str(tmp_path) not in card and not ABSOLUTE_PATH.search(card), ABSOLUTE_PATH.search(card)
    assert ("`make model MODEL_MINUTES=60 MODEL_SEED=3 HOLDOUT=WORKDIR/summary_A_to_B.json "
            "MACHINE_FROM=WORKDIR/pre/Dataset902_KneeHalfA/kneesegPlans.json ROBUSTNESS=WORKDIR/robustness_B.md`") in card
    assert "`python benchmarks/robustness_real.py --workdir WORKDIR --eval-half B --table WORKDIR/robustness_B.md`" in card
    assert "| inverted contrast | 0.951 |" in card
    assert ("`python benchmarks/kneebones3dify_holdout.py --budget-min 60 --seed 3 --machine reference --workdir WORKDIR`, "
            "in its `WORKDIR/summary_A_to_B.json`") in card  # the committed plans are for the reference profile
    assert "| femur | 0.9732 | 1.05 | 0.337 |" in card and "all-bone Dice 0.9842 (the build command above" in card
    shipped = (Path(kneeseg.models.__file__).parent / "kneebones3dify" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not ABSOLUTE_PATH.search(shipped) and "`make model MODEL_MINUTES=60 MODEL_SEED=0 " in shipped
