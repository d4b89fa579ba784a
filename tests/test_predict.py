"""kneeseg_predict / find_postprocessing / evaluate / export_stl end to end on the small phantom model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODEL_DIR, path_flags, tree_snapshot

from kneeseg.cli.evaluate import main as evaluate_main
from kneeseg.cli.export_stl import main as stl_main
from kneeseg.cli.find_postprocessing import main as findpp_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.errors import KneesegError
from kneeseg.inference.cases import discover_cases
from kneeseg.io import Geometry, read_image, write_image
from kneeseg.postprocessing.chooser import ATTACHED_SHARE

DS = "Dataset900_KneePhantom"


def _geometry_equal(a, b):
    return a.matches(b, tol=1e-6) is None


def test_predict_and_evaluate_the_held_out_cases(small_model, tmp_path):
    paths = small_model
    out = tmp_path / "pred"
    assert predict_main(["-i", str(paths.raw / DS / "imagesTs"), "-o", str(out), "--device", "cpu", "--no-progress",
                         "--overlays", str(tmp_path / "qc"), *path_flags(paths)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.ctbl", "labels.itksnap.txt",  # names, colours
                                                     "phantom_test_000.nii.gz", "phantom_test_001.nii.gz", "study.csv"]
    for case in ("phantom_test_000", "phantom_test_001"):
        _, g_in = read_image(paths.raw / DS / "imagesTs" / f"{case}_0000.nii.gz")
        _, g_out = read_image(out / f"{case}.nii.gz")
        assert _geometry_equal(g_in, g_out)
        assert (tmp_path / "qc" / f"{case}.png").read_bytes()[:4] == b"\x89PNG"
    summary_path = tmp_path / "eval" / "summary.json"
    assert evaluate_main(["-ref", str(paths.raw / DS / "labelsTs"), "-pred", str(out), "-o", str(summary_path),
                          "--overlays", str(tmp_path / "eval_qc"), "--images", str(paths.raw / DS / "imagesTs"),
                          "--no-progress"]) == 0
    summary = json.loads(summary_path.read_text())
    # After 100 iterations the model finds the big bones; a model that learned nothing scores ~0
    # (all background) and one that marks the whole limb as bone scores < 0.2.
    assert summary["mean"]["all_bones"]["dice"] > 0.6, summary["mean"]["all_bones"]
    assert summary["mean"]["femur"]["dice"] > 0.5 and summary["mean"]["tibia"]["dice"] > 0.5
    assert len(summary["per_case"]) == 2
    csv = summary_path.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("case,structure,dice,iou,hd95") and len(csv) == 1 + 2 * 4
    assert (tmp_path / "eval_qc" / "phantom_test_000.png").exists()
    assert (tmp_path / "eval_qc" / "phantom_test_000_largest_error.png").read_bytes()[:4] == b"\x89PNG"


def test_geometry_is_kept_for_nrrd_and_rotated_nifti(small_model, tmp_path):
    paths = small_model
    image, g = read_image(paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz")
    c, s = np.cos(0.3), np.sin(0.3)
    rotated = Geometry(g.size, (2.4, 2.5, 2.6), (12.5, -40.0, 7.25), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    for name in ("scan_0000.nrrd", "scan_0000.nii.gz", "scan_0000.mha"):
        write_image(image, rotated, tmp_path / "in" / name)
        out = tmp_path / "out" / name.replace("_0000", "")
        assert predict_main(["-i", str(tmp_path / "in" / name), "-o", str(out), "--device", "cpu", "--tta", "none",
                             "--no-progress", *path_flags(paths)]) == 0
        labels, g_out = read_image(out)
        assert _geometry_equal(rotated, g_out) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_dicom_series_input_gives_nifti_with_its_geometry(small_model, tmp_path, shared_dir):
    paths = small_model
    dicom = shared_dir / "original_subset" / "Data"
    before = tree_snapshot(dicom)
    out = tmp_path / "out"
    assert predict_main(["-i", str(dicom), "-o", str(out), "--device", "cpu", "--no-progress", *path_flags(paths)]) == 0
    assert tree_snapshot(dicom) == before
    _, g_in = read_image(dicom)
    labels, g_out = read_image(out / "Data.nii.gz")
    assert _geometry_equal(g_in, g_out) and labels.shape == (12, 512, 512)


def test_single_file_with_probabilities_and_model_dir_elsewhere(small_model, tmp_path):
    paths = small_model
    model = tmp_path / "my_model"
    shutil.copytree(paths.results / MODEL_DIR, model)
    out = tmp_path / "case.nii.gz"
    assert predict_main(["-i", str(paths.raw / DS / "imagesTs" / "phantom_test_001_0000.nii.gz"), "-o", str(out),
                         "-m", str(model), "--save-probabilities", "--device", "cpu", "--no-progress",
                         "--results", str(tmp_path / "empty")]) == 0
    labels, _ = read_image(out)
    npz = np.load(tmp_path / "case.npz")
    probs = npz["probabilities"].astype(np.float32)
    assert probs.shape == (4, *labels.shape) and npz["labels"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)
    # No post-processing chosen yet: labels are the argmax (up to float16 ties in the saved copy).
    assert np.mean(np.argmax(probs, 0) != labels) < 1e-4


def test_postprocessing_is_chosen_on_cross_validation_and_applied(small_model, tmp_path, capsys):
    paths = small_model
    model = tmp_path / "model"
    shutil.copytree(paths.results / MODEL_DIR, model)
    assert findpp_main(["-m", str(model), "--no-progress", "--raw", str(paths.raw)]) == 0
    chosen = json.loads((model / "postprocessing.json").read_text())
    assert chosen["cv_cases"] == 1 and chosen["mean_dice_after"] >= chosen["mean_dice_before"]
    assert len(chosen["candidates"]) == 1 + 9 * 3 + 2 + 1  # per bone: relabel attached / enclosed pieces, keep largest
    # and remove small (each: relabel / drop pieces), fill slice-wise, fill, close; tibia and patella: remove far
    # pieces; the patella: keep its pieces in front of the femur
    placement = [(c["label"], c["of"], c["side"], c["kept"]) for c in chosen["candidates"] if c["op"] == "keep_side"]
    assert placement == [(3, 1, "anterior", True)]  # the phantoms' patellae lie in front of their femurs
    assert "keep_side 3 (anterior of 1)" in capsys.readouterr().out  # the summary names each step's parameters
    assert [(c["label"], c["from"]) for c in chosen["candidates"] if c["op"] == "remove_far"] == [(2, 1), (3, 1)]
    kept = [{k: v for k, v in c.items() if k not in ("mean_dice", "kept")} for c in chosen["candidates"] if c["kept"]]
    assert kept == chosen["steps"]
    # Steps made no-ops by steps kept before them are skipped (a bone kept in one piece has no other pieces).
    # So are removing small pieces a second time: the plain variants follow relabelling ones that were kept.
    # So is relabelling wrapped pieces where attached ones were relabelled.
    for c in chosen["candidates"]:
        if c["op"] == "relabel_enclosed" and "share" not in c:
            attached = {"op": "relabel_enclosed", "label": c["label"], "share": ATTACHED_SHARE}
            assert c.get("implied_by_kept_steps", False) == (attached in chosen["steps"])
        if c["op"] in ("keep_largest", "remove_small") and "fragments" not in c:
            relabelling = {k: v for k, v in c.items() if k in ("op", "label", "min_mm3")} | {"fragments": "neighbour"}
            assert c.get("implied_by_kept_steps", False) == (relabelling in chosen["steps"])
    case = paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    assert predict_main(["-i", str(case), "-o", str(tmp_path / "a.nii.gz"), "-m", str(model), "--device", "cpu", "--no-progress"]) == 0
    assert predict_main(["-i", str(case), "-o", str(tmp_path / "b.nii.gz"), "-m", str(model), "--device", "cpu",
                         "--no-postprocessing", "--no-progress"]) == 0
    from kneeseg.postprocessing.operations import apply_postprocessing

    raw_pred, g = read_image(tmp_path / "b.nii.gz")
    post, _ = read_image(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(post, apply_postprocessing(raw_pred, chosen["steps"], g.spacing_zyx, g.direction))


def test_same_seed_same_prediction(small_model, tmp_path):
    paths = small_model
    case = paths.raw / DS / "imagesTs" / "phantom_test_001_0000.nii.gz"
    for name in ("a", "b"):
        assert predict_main(["-i", str(case), "-o", str(tmp_path / f"{name}.nii.gz"), "--device", "cpu",
                             "--no-progress", *path_flags(paths)]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "a.nii.gz")[0], read_image(tmp_path / "b.nii.gz")[0])


def test_test_time_scales_average_the_scales_probabilities(small_model, tmp_path, capsys):
    """--tta-scales predicts on grids at multiples of the planned spacing and averages the probabilities
    on the input's grid: the same as averaging single-scale predictions, in the input's geometry."""
    from kneeseg.inference.model import load_model
    from kneeseg.inference.predictor import Predictor

    paths = small_model
    image, g = read_image(paths.raw / DS / "imagesTs" / "phantom_test_001_0000.nii.gz")
    c, s = np.cos(0.2), np.sin(0.2)
    tilted = Geometry(g.size, (1.1, 0.9, 1.3), (5.0, -3.0, 2.0), (c, 0.0, -s, 0.0, 1.0, 0.0, s, 0.0, c))
    write_image(image, tilted, tmp_path / "in_0000.nii.gz")
    out = tmp_path / "out.nii.gz"
    assert predict_main(["-i", str(tmp_path / "in_0000.nii.gz"), "-o", str(out), "--tta-scales", "1.2", "0.8", "1.0",
                         "--save-probabilities", "--no-postprocessing", "--device", "cpu", "--no-progress",
                         *path_flags(paths)]) == 0
    labels, g_out = read_image(out)
    assert _geometry_equal(tilted, g_out)
    saved = np.load(tmp_path / "out.npz")["probabilities"].astype(np.float32)
    assert np.mean(np.argmax(saved, 0) != labels) < 1e-4
    model = load_model(paths.results / MODEL_DIR)
    single = [Predictor(model, scales=[f]).predict([image.astype(np.float32)], tilted, keep_probabilities=True).probabilities
              for f in (0.8, 1.0, 1.2)]
    assert np.abs(single[0] - single[1]).max() > 0.05  # the scale does change what the network sees
    np.testing.assert_allclose(saved, sum(single) / 3, atol=2e-3)  # float16 copy on disk
    capsys.readouterr()  # the QC warnings of the tilted scan
    _refused(["-i", str(tmp_path / "in_0000.nii.gz"), "-o", str(tmp_path / "bad" / "x.nii.gz"), "--tta-scales", "1.0", "0.5"],
             capsys, "test-time scales must lie in 0.75-1.3", paths)
    assert not (tmp_path / "bad").exists()


def _refused(argv, capsys, message, paths=None):
    code = predict_main([*argv, "--device", "cpu", "--no-progress", *(path_flags(paths) if paths else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_bad_input_is_refused_without_output(small_model, tmp_path, capsys, monkeypatch):
    paths = small_model
    image, g = read_image(paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz", np.float32)
    out = tmp_path / "out"
    _refused(["-i", str(tmp_path / "nope.nii.gz"), "-o", str(out)], capsys, "nope.nii.gz: input not found", paths)
    bad = image.copy()
    bad[5, 5, 5] = np.nan
    write_image(bad, g, tmp_path / "nan_0000.nii.gz")
    _refused(["-i", str(tmp_path / "nan_0000.nii.gz"), "-o", str(out)], capsys, "nan_0000.nii.gz: contains NaN", paths)
    sitk.WriteImage(sitk.GetImageFromArray(image[20]), str(tmp_path / "flat_0000.nii.gz"))
    _refused(["-i", str(tmp_path / "flat_0000.nii.gz"), "-o", str(out)], capsys, "flat_0000.nii.gz: is 2D", paths)
    assert not out.exists() or not any(out.iterdir())  # no partial output
    (tmp_path / "blocker").write_text("a file where a folder should be")
    good = paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    _refused(["-i", str(good), "-o", str(tmp_path / "blocker" / "x")], capsys, "cannot create output folder", paths)
    import kneeseg.models

    monkeypatch.setattr(kneeseg.models, "BUILTIN_MODEL_DIR", tmp_path / "absent")  # an install without the built-in model
    _refused(["-i", str(good), "-o", str(out), "--results", str(tmp_path / "empty")], capsys, "no trained model found")
    _refused(["-i", str(good), "-o", str(out), "-f", "3"], capsys, "fold 3 has no checkpoint_final.pth", paths)
    assert not out.exists() or not any(out.iterdir())


def test_a_broken_postprocessing_file_is_refused_before_predicting(small_model, tmp_path, capsys):
    paths = small_model
    model = tmp_path / "model"
    shutil.copytree(paths.results / MODEL_DIR, model)
    good = paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    out = tmp_path / "out"
    for steps, message in (([{"op": "keep_biggest", "label": 1}], "step 1: unknown post-processing op 'keep_biggest'"),
                           ([{"op": "fill_holes", "label": 1}, {"op": "closing", "label": 2}], "step 2: closing: missing radius_mm"),
                           ([{"op": "remove_far", "label": 3, "max_mm": 20}], "step 1: remove_far: missing from"),
                           ([{"op": "remove_small", "label": 3, "min_mm3": 900, "min_voxels": 9}],
                            "step 1: remove_small: unknown parameter(s) min_voxels"),
                           ([{"op": "keep_largest", "label": 1, "fragments": "nearest"}],
                            "step 1: keep_largest: fragments 'nearest' must be one of background, neighbour"),
                           ([{"op": "keep_largest", "label": 7}], "step 1: keep_largest: label 7 must be one of the model's bone labels [1, 2, 3]"),
                           ([{"op": "closing", "label": 1, "radius_mm": -1}], "step 1: closing: radius_mm -1 must be a positive number"),
                           ([{"op": "keep_largest_foreground", "n": 2.5}], "step 1: keep_largest_foreground: n 2.5 must be an integer >= 1"),
                           ([{"op": "relabel_enclosed", "label": 3, "share": 1}],
                            "step 1: relabel_enclosed: share 1 must be a number between 0 and 1"),
                           ({"op": "fill_holes"}, "no list of post-processing 'steps'")):
        (model / "postprocessing.json").write_text(json.dumps({"steps": steps}))
        _refused(["-i", str(good), "-o", str(out), "-m", str(model)], capsys, f"{model / 'postprocessing.json'}: {message}")
    assert not out.exists() or not any(out.iterdir())


def test_missing_channel_of_a_multichannel_model(tmp_path):
    write_image(np.zeros((4, 4, 4), np.int16), Geometry((4, 4, 4), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                tmp_path / "knee_0000.nii.gz")
    with pytest.raises(KneesegError, match="knee_0001.nii.gz: channel 0001 missing"):
        discover_cases(tmp_path / "knee_0000.nii.gz", tmp_path / "out", num_channels=2)
    assert len(discover_cases(tmp_path / "knee_0000.nii.gz", tmp_path / "out", num_channels=1)) == 1


def test_export_stl_is_watertight_and_keeps_volume(small_model, tmp_path, capsys):
    paths = small_model
    label = paths.raw / DS / "labelsTs" / "phantom_test_000.nii.gz"
    assert stl_main([str(label), "-o", str(tmp_path / "stl")]) == 0
    from kneeseg.export.stl import bone_mesh, mesh_volume

    labels, geometry = read_image(label)
    for name, value in (("femur", 1), ("tibia", 2), ("patella", 3)):
        data = (tmp_path / "stl" / f"{name}.stl").read_bytes()
        count = int(np.frombuffer(data[80:84], np.uint32)[0])
        assert len(data) == 84 + 50 * count
        verts, faces = bone_mesh(labels == value, geometry)
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        _, uses = np.unique(edges, axis=0, return_counts=True)
        assert np.all(uses == 2)  # closed: every edge belongs to exactly two triangles
        voxel = (labels == value).sum() * np.prod(geometry.spacing)
        assert abs(mesh_volume(verts, faces) / voxel - 1) < 0.08  # smoothing does not shrink the bone
        lo = geometry.index_to_physical(np.zeros((1, 3)))[0]
        hi = geometry.index_to_physical(np.array([geometry.size]) - 1)[0]
        # Inside the scan; bones cut by the field of view are capped at most half a voxel outside.
        margin = max(geometry.spacing)
        assert np.all(verts.min(0) >= np.minimum(lo, hi) - margin) and np.all(verts.max(0) <= np.maximum(lo, hi) + margin)
    assert "femur" in capsys.readouterr().out
    assert stl_main([str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("order,flip", [((2, 0, 1), (False, False, True)), ((0, 1, 2), (True, True, False))],
                         ids=["sagittal-stored", "flipped"])
def test_scans_stored_in_another_orientation_get_the_same_bones(small_model, tmp_path, order, flip):
    """A scan stored sagittally, or with flipped axes, is the same knee in space: after the canonical
    orientation the network sees the same array, so the labels are the same voxels, in the input's layout.
    So are they after post-processing, whose keep_side reads front and back from the scan's direction."""
    paths = small_model
    model = tmp_path / "model"
    shutil.copytree(paths.results / MODEL_DIR, model)
    assert findpp_main(["-m", str(model), "--no-progress", "--raw", str(paths.raw)]) == 0
    assert {"op": "keep_side", "label": 3, "of": 1, "side": "anterior"} in json.loads((model / "postprocessing.json").read_text())["steps"]
    source = paths.raw / DS / "imagesTs" / "phantom_test_001_0000.nii.gz"
    assert predict_main(["-i", str(source), "-o", str(tmp_path / "axial.nii.gz"), "--device", "cpu", "--no-progress",
                         "-m", str(model)]) == 0
    stored = sitk.Flip(sitk.PermuteAxes(sitk.ReadImage(str(source)), order), flip)
    sitk.WriteImage(stored, str(tmp_path / "other_0000.nii.gz"))
    assert predict_main(["-i", str(tmp_path / "other_0000.nii.gz"), "-o", str(tmp_path / "other.nii.gz"), "--device", "cpu",
                         "--no-progress", "-m", str(model)]) == 0
    out = sitk.ReadImage(str(tmp_path / "other.nii.gz"))
    assert _geometry_equal(Geometry.of(stored), Geometry.of(out))
    axial = sitk.ReadImage(str(tmp_path / "axial.nii.gz"))
    expected = sitk.GetArrayFromImage(sitk.Flip(sitk.PermuteAxes(axial, order), flip))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), expected)
    # And anatomy is where it belongs: the femur above the tibia in scanner space.
    labels = sitk.GetArrayFromImage(axial)
    assert np.argwhere(labels == 1)[:, 0].mean() > np.argwhere(labels == 2)[:, 0].mean()


def test_timings_say_where_each_scans_time_went(small_model, tmp_path, capsys):
    """--timings: one line per scan on stderr with the seconds of each stage; the network's work it
    names is, within the planner's way of counting, what torch's own FLOP counter counts over the
    same prediction."""
    import re

    from torch.utils.flop_counter import FlopCounterMode

    from kneeseg.inference.model import load_model
    from kneeseg.inference.predictor import Predictor
    from kneeseg.inference.timing import StageClock

    paths = small_model
    scans = paths.raw / DS / "imagesTs"
    assert predict_main(["-i", str(scans), "-o", str(tmp_path / "out"), "--timings", "--device", "cpu", "--no-progress",
                         *path_flags(paths)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "timings:" in line]
    assert len(lines) == 2 and all(str(scans) in line for line in lines), lines
    stages = re.findall(r"([a-z][a-z' ,-]*?) (\d+\.\d) s", lines[0].split("timings:", 1)[1].split(": ", 1)[1])
    names = [name.strip(", ") for name, _ in stages]
    assert names[:4] == ["read", "preprocess", "network", "to the scan's grid"] and names[-1] == "total", names
    seconds = {name: float(value) for name, value in zip(names, (v for _, v in stages))}
    assert abs(sum(v for k, v in seconds.items() if k != "total") - seconds["total"]) <= 0.1 * len(seconds)
    assert re.search(r"network \d+\.\d s \((fp32|bf16), \d+\.\d GFLOP, \d+ GFLOP/s\)", lines[0])

    model = load_model(paths.results / MODEL_DIR)
    image, geometry = read_image(scans / "phantom_test_000_0000.nii.gz")
    clock = StageClock()
    with FlopCounterMode(display=False) as counter:
        Predictor(model).predict([image.astype(np.float32)], geometry, clock=clock)
    # The planner counts each transposed convolution at its output resolution: 10-12 % above torch's
    # count, never below; a window, mirror or fold miscounted would be a factor of 2 or more.
    assert 1.0 <= clock.network_gflop / (counter.get_total_flops() / 1e9) < 1.25
    assert clock.seconds["network"] > 0 and clock.network_gflop > 0
