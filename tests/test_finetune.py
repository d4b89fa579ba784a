"""Fine-tuning a trained model on corrected scans: plans from the parent (--plans-from), weights from
it (--pretrained), parents that do not fit refused, and the whole loop through the commands:
predict with statistics, review order, add the correction (a .seg.nrrd written with pynrrd), plan,
fine-tune, predict with the fine-tuned model."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import SimpleITK as sitk
import torch
from conftest import make_phantom, path_flags, write_dicom_series
from test_add_case import write_slicer_segmentation

import kneeseg.models
from kneeseg.cli.add_case import main as add_main
from kneeseg.cli.plan_and_preprocess import main as plan_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.cli.train import main as train_main
from kneeseg.io import read_image
from kneeseg.training.checkpoint import load_checkpoint

DS = "Dataset900_KneePhantom"
FAST = ["--device", "cpu", "--no-progress"]


def test_a_parent_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys):
    """The shipped model (one channel, femur/tibia/patella): a two-channel dataset cannot take its plans,
    and a dataset planned on its own cannot take its weights."""
    paths = make_phantom(tmp_path, n=2)
    folder = paths.raw / DS
    ds = json.loads((folder / "dataset.json").read_text())
    two = dict(ds, channel_names={"0": "T2", "1": "T1"})
    (folder / "dataset.json").write_text(json.dumps(two))
    for image in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
        shutil.copy(image, image.with_name(image.name.replace("_0000", "_0001")))
    assert plan_main(["--plans-from", "builtin", *FAST, *path_flags(paths)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model builtin cannot serve this dataset: it has 1 channel(s)" in err[0]
    assert "2 channel(s)" in err[0] and not paths.preprocessed.exists()
    for flags, named in ((["--machine", "reference"], "--machine would be ignored"),
                         (["--cpu-training-hours", "2", "--gpu-memory-gb", "24"], "--cpu-training-hours, --gpu-memory-gb would be ignored")):
        assert plan_main(["--plans-from", "builtin", *flags, *FAST, *path_flags(paths)]) == 2
        assert named in capsys.readouterr().err

    (folder / "dataset.json").write_text(json.dumps(ds))  # one channel again, planned on its own
    for image in (folder / "imagesTr").glob("*_0001.nii.gz"):
        image.unlink()
    assert plan_main(["--machine", "reference", *FAST, *path_flags(paths)]) == 0
    capsys.readouterr()
    assert train_main(["all", "--pretrained", "builtin", "--epochs", "1", *FAST, *path_flags(paths)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pretrained builtin: its 3d_cpu network or preprocessing differs" in err[0]
    assert "--plans-from builtin" in err[0] and not paths.results.exists()
    assert train_main(["all", "--pretrained", str(tmp_path / "nothing"), *FAST, *path_flags(paths)]) == 2
    assert "not a trained model folder (no plans.json)" in capsys.readouterr().err

    # planned --plans-from it, the dataset takes its configuration, and (its air being noise while the
    # shipped model normalises inside the nonzero region) its cases are cached with their air as zeros
    assert plan_main(["--plans-from", "builtin", *FAST, *path_flags(paths)]) == 0
    shipped = json.loads((kneeseg.models.BUILTIN_MODEL_DIR / "plans.json").read_text())["configurations"]["3d_cpu"]
    plans = json.loads((paths.preprocessed / DS / "kneesegPlans.json").read_text())
    assert plans["configurations"]["3d_cpu"]["network"] == shipped["network"] and shipped["use_mask_for_norm"] == [True]
    raw_scan = read_image(folder / "imagesTr" / "phantom_000_0000.nii.gz")[0]
    cached = np.load(paths.preprocessed / DS / plans["configurations"]["3d_cpu"]["data_identifier"] / "phantom_000.npy")
    assert np.mean(raw_scan == 0) < 0.01 < 0.1 < np.mean(cached == 0)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_correction_loop_through_the_commands(phantom_builtin, small_model, tmp_path, capsys):
    # 1. predict a folder of DICOM series with the built-in model, with statistics and a review order
    dicom = tmp_path / "dicom"
    for k in (0, 1):
        write_dicom_series(small_model.raw / DS / "imagesTs" / f"phantom_test_00{k}_0000.nii.gz", dicom / f"knee{k}")
    first = tmp_path / "first"
    assert predict_main(["-i", str(dicom), "-o", str(first), "-m", "builtin", "--statistics", *FAST]) == 0
    shares = {c: json.loads((first / f"{c}.statistics.json").read_text())["uncertain_share"] for c in ("knee0", "knee1")}
    assert all(0.0 <= s <= 1.0 for s in shares.values())
    with open(first / "review_order.csv", encoding="utf-8", newline="") as f:
        order = list(csv.DictReader(f))
    assert [row["case"] for row in order] == sorted(shares, key=lambda c: -shares[c])  # least sure first
    assert [float(row["uncertain_share"]) for row in order] == sorted(shares.values(), reverse=True)
    with open(first / "statistics.csv", encoding="utf-8", newline="") as f:
        assert {(r["case"], float(r["uncertain_share"])) for r in csv.DictReader(f)} == set(shares.items())
    worst = order[0]["case"]

    # 2. the correction, as 3D Slicer saves it (here the phantom's true label, written with pynrrd)
    truth = read_image(small_model.raw / DS / "labelsTs" / f"phantom_test_00{worst[-1]}.nii.gz")[0]
    series_geometry = read_image(dicom / worst)[1]
    corrected = tmp_path / f"{worst}.seg.nrrd"
    write_slicer_segmentation(corrected, [truth], [("Femur", 0, 1), ("Tibia", 0, 2), ("Patella", 0, 3)], series_geometry)

    # 3-5. add it to a new dataset, plan with the parent's plans, fine-tune for a couple of steps
    flags = ["--raw", str(tmp_path / "raw"), "--preprocessed", str(tmp_path / "pre"), "--results", str(tmp_path / "res")]
    assert add_main(["-d", "950", "--image", str(dicom / worst), "--label", str(corrected), *flags]) == 0
    assert plan_main(["-d", "950", "--plans-from", "builtin", *FAST, *flags]) == 0
    parent_plans = json.loads((phantom_builtin / "plans.json").read_text())["configurations"]["3d_cpu"]
    plans = json.loads((tmp_path / "pre" / "Dataset950_MyScanner" / "kneesegPlans.json").read_text())
    assert list(plans["configurations"]) == ["3d_cpu"]
    for key in ("spacing", "patch_size", "network", "normalization", "use_mask_for_norm", "training"):
        assert plans["configurations"]["3d_cpu"][key] == parent_plans[key]
    assert train_main(["all", "-d", "950", "--pretrained", "builtin", "--epochs", "1", "--iters-per-epoch", "2",
                       "--val-iters", "1", *FAST, *flags]) == 0
    model = tmp_path / "res" / "Dataset950_MyScanner" / "kneesegTrainer__kneesegPlans__3d_cpu"
    parent = json.loads((model / "model.json").read_text())["parent"]
    assert parent["model"] == "builtin" and parent["fold"] == "0" and parent["configuration"] == "3d_cpu"
    assert parent["checkpoint_sha256"] == _sha256(phantom_builtin / "fold_0" / "checkpoint_final.pth")
    assert "--pretrained builtin" in (model / "README.md").read_text() and parent["checkpoint_sha256"] in (model / "README.md").read_text()
    start = load_checkpoint(phantom_builtin / "fold_0" / "checkpoint_final.pth")["network"]
    tuned = load_checkpoint(model / "fold_all" / "checkpoint_final.pth")["network"]
    moved = max(float((tuned[k].float() - start[k].float()).abs().max()) for k in start if start[k].is_floating_point())
    assert 0 < moved < 0.01  # two small steps from the parent's weights, not from random ones
    assert not all(torch.equal(tuned[k], start[k]) for k in start)

    # 6. predict with the fine-tuned model: found by -d, in the scans' geometry
    final = tmp_path / "final"
    capsys.readouterr()
    assert predict_main(["-i", str(dicom), "-o", str(final), "-d", "950", "--statistics", *FAST, *flags]) == 0
    assert "built-in" not in capsys.readouterr().err
    for case in ("knee0", "knee1"):
        assert json.loads((final / f"{case}.statistics.json").read_text())["model"] == str(model)
        image = sitk.ReadImage(str(final / f"{case}.nii.gz"))
        series = read_image(dicom / case)[1]
        assert np.allclose(image.GetOrigin(), series.origin) and np.allclose(image.GetSpacing(), series.spacing)
        assert np.allclose(image.GetDirection(), series.direction) and image.GetSize() == series.size

    # 7. a fold from random weights beside the fine-tuned one is refused: model.json speaks for all folds
    capsys.readouterr()
    assert train_main(["0", "-d", "950", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", *FAST, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "started from builtin" in err[0] and "would start from random weights" in err[0], err
    assert not (model / "fold_0").exists() and "parent" in json.loads((model / "model.json").read_text())


def test_the_review_order_puts_no_bone_first_and_statistics_without_a_share_last():
    from kneeseg.export.statistics import review_rows

    cases = [{"case": "sure", "uncertain_share": 0.02}, {"case": "unsure", "uncertain_share": 0.4},
             {"case": "empty", "uncertain_share": None}, {"case": "old", "uncertain_share": None, "unrecorded": True}]
    rows = review_rows([{**c, "qc_warnings": [], "label_map": f"{c['case']}.nii.gz"} for c in cases])
    assert [r["case"] for r in rows] == ["empty", "unsure", "sure", "old"] and [r["rank"] for r in rows] == [1, 2, 3, 4]
