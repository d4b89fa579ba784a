"""Nothing lost, nothing silently wrong: inputs are never replaced, degenerate inputs are refused,
a study reports its bad cases and writes the others, a model without post-processing says so."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODEL_DIR, make_phantom, path_flags, tree_snapshot, write_dicom_series

from kneeseg.cli.evaluate import main as evaluate_main
from kneeseg.cli.export_stl import main as stl_main
from kneeseg.cli.find_postprocessing import main as findpp_main
from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.cli.train import main as train_main
from kneeseg.io import Geometry, read_image, write_image

DS = "Dataset900_KneePhantom"


def _one_line_error(code: int, capsys, message: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], (code, err)


def _scan(paths, k: int = 0):
    return paths.raw / DS / "imagesTs" / f"phantom_test_00{k}_0000.nii.gz"


def test_no_output_replaces_an_input(small_model, tmp_path, capsys):
    paths = small_model
    scan = tmp_path / "knee_0000.nii.gz"
    shutil.copy(_scan(paths), scan)
    before = tree_snapshot(tmp_path)
    code = predict_main(["-i", str(scan), "-o", str(scan), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _one_line_error(code, capsys, f"{scan}: would replace the input {scan}")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)  # the same file under another name
    code = predict_main(["-i", str(scan), "-o", str(link), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _one_line_error(code, capsys, "would replace the input")
    link.unlink()
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(scan, scans / "other_0000.nii.gz")
    before = tree_snapshot(tmp_path)
    code = predict_main(["-i", str(scans), "-o", str(scans), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _one_line_error(code, capsys, f"{scans}: is the input folder")
    # Nor into it: predictions, QC pictures and meshes written there would be taken for scans, or mix with them.
    for flags in (["-o", str(scans / "pred")], ["-o", str(tmp_path / "pred"), "--overlays", str(scans)],
                  ["-o", str(tmp_path / "pred"), "--stl", str(scans / "stl")]):
        code = predict_main(["-i", str(scans), *flags, "--device", "cpu", "--no-progress", *path_flags(paths)])
        _one_line_error(code, capsys, f"would {'replace' if flags[-1] == str(scans) else 'be written into'} the input {scans}")
        assert tree_snapshot(tmp_path) == before
    # A DICOM series folder is an input as a whole: nothing is written into it.
    dicom = tmp_path / "series"
    write_dicom_series(scan, dicom)
    before = tree_snapshot(tmp_path)
    code = predict_main(["-i", str(dicom), "-o", str(dicom / "bones.nii.gz"), "--device", "cpu", "--no-progress",
                         *path_flags(paths)])
    _one_line_error(code, capsys, "would be written into the input")
    # kneeseg_evaluate: the summary may not replace a label file it reads.
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(paths.raw / DS / "labelsTs" / "phantom_test_000.nii.gz", labels / "summary.json")
    before = tree_snapshot(tmp_path)
    code = evaluate_main(["-ref", str(labels / "summary.json"), "-pred", str(labels / "summary.json"), "-o",
                          str(labels / "summary.json"), "--no-progress"])
    _one_line_error(code, capsys, "would replace the input")
    assert tree_snapshot(tmp_path) == before


def test_a_constant_image_is_refused_and_a_study_writes_its_good_cases(small_model, tmp_path, capsys):
    paths = small_model
    image, geometry = read_image(_scan(paths), np.float32)
    constant = tmp_path / "flat_0000.nii.gz"
    write_image(np.full_like(image, 7.0), geometry, constant)
    out = tmp_path / "out"
    code = predict_main(["-i", str(constant), "-o", str(out), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _one_line_error(code, capsys, f"{constant}: every voxel is 7.0: a constant image cannot be segmented")
    assert not out.exists() or not any(out.iterdir())
    # In a folder of scans the bad one is skipped and listed; the good one is written; the exit is non-zero.
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(constant, study / "aa_0000.nii.gz")
    shutil.copy(_scan(paths), study / "bb_0000.nii.gz")
    code = predict_main(["-i", str(study), "-o", str(out), "--device", "cpu", "--no-progress", *path_flags(paths)])
    err = capsys.readouterr().err
    assert code == 2 and sorted(p.name for p in out.iterdir()) == ["bb.nii.gz", "labels.ctbl", "labels.itksnap.txt", "study.csv"], err
    errors = [line for line in err.splitlines() if line.startswith("kneeseg_predict: error:")]
    assert len(errors) == 2 and "aa_0000.nii.gz: every voxel is 7.0" in errors[0], errors
    assert "1 of 2 cases failed" in errors[1] and "the other 1 were written" in errors[1]


def test_a_model_without_post_processing_says_so(small_model, tmp_path, capsys):
    paths = small_model
    model = tmp_path / "model"
    shutil.copytree(paths.results / MODEL_DIR, model)
    (model / "postprocessing.json").unlink(missing_ok=True)
    out = tmp_path / "bones.nii.gz"
    assert predict_main(["-i", str(_scan(paths)), "-o", str(out), "-m", str(model), "--device", "cpu", "--no-progress"]) == 0
    assert f"{model}: no postprocessing.json, so the outputs are not post-processed" in capsys.readouterr().err
    assert predict_main(["-i", str(_scan(paths)), "-o", str(tmp_path / "raw.nii.gz"), "-m", str(model), "--device", "cpu",
                         "--no-progress", "--no-postprocessing"]) == 0
    assert "postprocessing.json" not in capsys.readouterr().err  # asked for none: nothing to say


def test_a_model_folder_that_does_not_fit_its_checkpoint_is_named(small_model, tmp_path, capsys):
    paths = small_model
    model = tmp_path / "model"
    shutil.copytree(paths.results / MODEL_DIR, model)
    ds = json.loads((model / "dataset.json").read_text())
    ds["labels"]["fibula"] = 4  # a label the network has no output for
    (model / "dataset.json").write_text(json.dumps(ds))
    out = tmp_path / "out"
    code = predict_main(["-i", str(_scan(paths)), "-o", str(out), "-m", str(model), "--device", "cpu", "--no-progress"])
    _one_line_error(code, capsys, "checkpoint_final.pth: does not fit")
    assert not out.exists()


def test_post_processing_is_not_chosen_on_a_prediction_of_another_grid(small_model, tmp_path, capsys):
    paths = small_model
    results = tmp_path / "results"
    shutil.copytree(paths.results, results)
    validation = next((results / MODEL_DIR).glob("fold_0/validation/*.nii.gz"))
    labels, geometry = read_image(validation)
    narrower = Geometry((geometry.size[0] - 2, *geometry.size[1:]), geometry.spacing, geometry.origin, geometry.direction)
    write_image(labels[:, :, :-2], narrower, validation)
    before = tree_snapshot(results)
    flags = ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(results)]
    code = findpp_main(["--device", "cpu", "--no-progress", *flags])
    _one_line_error(code, capsys, f"{validation}: cross-validation prediction does not match its reference")
    assert tree_snapshot(results) == before


def test_a_dataset_whose_labels_are_all_empty_is_not_planned(tmp_path, capsys):
    paths = make_phantom(tmp_path, n=2)
    for label in (paths.raw / DS / "labelsTr").iterdir():
        seg, geometry = read_image(label)
        write_image(np.zeros_like(seg), geometry, label)
    before = tree_snapshot(paths.raw)
    code = pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(paths)])
    _one_line_error(code, capsys, "every label map is empty")
    assert tree_snapshot(paths.raw) == before and not paths.preprocessed.exists()


@pytest.mark.parametrize("argv,message", [
    (["kneeseg_evaluate", "-ref", "a", "-pred", "b", "--images", "c"], "the scans are only used to draw overlays"),
    (["kneeseg_predict", "--step", "0"], "sliding-window step 0.0: must be a fraction of the patch"),
    (["kneeseg_predict", "-o", "bones.stl"], "bones.stl: cannot write a label map as '.stl'"),
    (["kneeseg_train", "0", "--continue", "--overwrite"], "argument --overwrite: not allowed with argument --continue"),
    (["kneeseg_predict", "-m", "MODEL", "-c", "3d_fullres"], "-m names the model folder; -c would be ignored"),
])
def test_flags_that_cannot_be_honoured_are_refused(small_model, tmp_path, capsys, argv, message):
    paths = small_model
    main = {"kneeseg_evaluate": evaluate_main, "kneeseg_predict": predict_main, "kneeseg_train": train_main}[argv[0]]
    args = argv[1:]
    if argv[0] == "kneeseg_predict":
        args = ["-i", str(_scan(paths)), "-o", str(tmp_path / "out"), "--device", "cpu", *args, *path_flags(paths)]
        if "bones.stl" in args:  # the last -o wins
            args[args.index("bones.stl")] = str(tmp_path / "bones.stl")
        if "MODEL" in args:
            args[args.index("MODEL")] = str(paths.results / MODEL_DIR)
    if argv[0] == "kneeseg_evaluate":
        args = [a if a not in "abc" else str(tmp_path / a) for a in args]
    try:
        code = main(args)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err
    assert not (tmp_path / "out").exists()


def test_export_stl_does_not_replace_its_input(tmp_path, capsys):
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[3:9, 3:9, 3:9] = 1
    source = tmp_path / "femur.stl"  # a label map stored under the name the femur's mesh would get
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(tmp_path / "seg.nrrd"))
    (tmp_path / "seg.nrrd").rename(source)
    before = tree_snapshot(tmp_path)
    code = stl_main([str(source), "-o", str(tmp_path)])
    _one_line_error(code, capsys, f"{source}: would replace the input")
    assert tree_snapshot(tmp_path) == before


def test_export_stl_refuses_label_values_it_would_leave_out(tmp_path, capsys):
    """A fibula labelled 4 had no mesh and no word; with its dataset.json it gets one."""
    seg = np.zeros((16, 16, 16), np.uint8)
    seg[2:7, 3:12, 3:12], seg[9:14, 3:12, 3:12] = 1, 4
    path = tmp_path / "seg.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(path))
    before = tree_snapshot(tmp_path)
    code = stl_main([str(path), "-o", str(tmp_path / "meshes")])
    _one_line_error(code, capsys, f"{path}: holds label value(s) [4], not among the labels")
    assert tree_snapshot(tmp_path) == before
    scan = tmp_path / "scan.nii.gz"  # a scan given for its label map: a short line, not one value per intensity
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(16 ** 3, dtype=np.int16).reshape(16, 16, 16)), str(scan))
    before = tree_snapshot(tmp_path)
    code = stl_main([str(scan), "-o", str(tmp_path / "meshes")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and len(err[0]) < 400, err
    assert "[4, 5, 6, 7, 8, 9, 10, 11, ...] (4092 values)" in err[0] and "is it a scan?" in err[0], err
    assert tree_snapshot(tmp_path) == before
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "femur": 1, "fibula": 4},
        "numTraining": 1, "file_ending": ".nii.gz"}), encoding="utf-8")
    code = stl_main([str(path), "-o", str(tmp_path / "meshes"), "--dataset-json", str(tmp_path / "dataset.json")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == ["femur.stl", "fibula.stl"]


def test_a_fold_all_model_gets_its_post_processing_from_a_cross_validation_fold(small_model, tmp_path, capsys):
    """nnU-Net users train fold 'all' for a final model: it has no cross-validation predictions, so
    prediction says the outputs are not post-processed; trained beside fold 0, it gets fold 0's choice."""
    from conftest import make_paths

    paths = make_paths(tmp_path)
    for source, target in ((small_model.raw, paths.raw), (small_model.preprocessed, paths.preprocessed)):
        shutil.copytree(source, target)
    shutil.copytree(small_model.results / MODEL_DIR / "fold_0", paths.results / MODEL_DIR / "fold_0")
    quick = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu", "--no-progress"]
    assert train_main(["all", *quick, *path_flags(paths)]) == 0
    assert not (paths.results / MODEL_DIR / "fold_all" / "validation").exists()
    scan, out = _scan(small_model), tmp_path / "bones.nii.gz"
    capsys.readouterr()
    assert predict_main(["-i", str(scan), "-o", str(out), "-f", "all", "--device", "cpu", "--no-progress", *path_flags(paths)]) == 0
    assert "no postprocessing.json, so the outputs are not post-processed" in capsys.readouterr().err
    assert findpp_main(["--device", "cpu", "--no-progress", *path_flags(paths)]) == 0
    assert (paths.results / MODEL_DIR / "postprocessing.json").exists()
    capsys.readouterr()
    assert predict_main(["-i", str(scan), "-o", str(out), "-f", "all", "--overwrite", "--device", "cpu", "--no-progress",
                         *path_flags(paths)]) == 0  # its own earlier output: replaced as asked
    assert "postprocessing.json" not in capsys.readouterr().err
