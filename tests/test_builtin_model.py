"""The built-in model: used when nothing is trained, named with -m builtin, and its QC warnings for
scans unlike its training scans. The shipped weights, where this install has them, reproduce their
training scan (an integrity check, not a generalisation claim)."""

from __future__ import annotations

import dataclasses
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
from kneeseg.models import builtin_model_dir, second_reader_dir
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
    assert predict_main([*args, "-m", "builtin-any-contrast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-m builtin-any-contrast: this install has no any-contrast model" in err[0]
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_scan_the_model_cannot_read_goes_to_its_second_reader(phantom_builtin, small_model, tmp_path, capsys):
    """The built-in model's any-contrast model beside it reads the scans it is unsure of (the test
    model is unsure of most of what it finds): that reader's labels and post-processing, a warning
    that says so; --second-reader none turns it off, --second-reader takes another model folder, and a
    model of other labels is refused before anything is written."""
    (phantom_builtin / "postprocessing.json").unlink(missing_ok=True)  # the first reading as the network gives it
    second = phantom_builtin.with_name(f"{phantom_builtin.name}_any_contrast")
    shutil.copytree(phantom_builtin, second)
    mine = shutil.copytree(phantom_builtin, tmp_path / "mine")  # a model of the user's
    # Its own post-processing tells its labels apart: it drops every patella (label 3).
    (second / "postprocessing.json").write_text(json.dumps({"steps": [{"op": "remove_small", "label": 3, "min_mm3": 1e12}]}))
    scan = _scan(small_model)
    args = ["-i", str(scan), "--statistics", "--device", "cpu", "--no-progress"]
    first_only = tmp_path / "first" / "bones.nii.gz"
    assert predict_main([*args, "-o", str(first_only), "-m", "builtin", "--second-reader", "none"]) == 0
    first_labels, _ = read_image(first_only)
    assert 3 in first_labels  # a patella, which the second reader's post-processing would remove
    assert not any("second reader" in w for w in json.loads(first_only.with_name("bones.statistics.json").read_text())["qc_warnings"])
    capsys.readouterr()

    out = tmp_path / "second" / "bones.nii.gz"
    assert predict_main([*args, "-o", str(out), "-m", "builtin"]) == 0
    err = capsys.readouterr().err
    labels, geometry = read_image(out)
    assert geometry.matches(read_image(scan)[1]) is None
    assert 3 not in labels and np.count_nonzero(labels) > 0
    np.testing.assert_array_equal(labels, np.where(first_labels == 3, 0, first_labels))  # the same network, its steps
    warned = json.loads(out.with_name("bones.statistics.json").read_text())["qc_warnings"]
    line = next(w for w in warned if w.startswith("read by the model's second reader: the model was unsure of "))
    assert line in err and any(w.startswith("the second reader is unsure of") for w in warned)

    named = tmp_path / "named" / "bones.nii.gz"  # another model has none unless given one
    assert predict_main([*args, "-o", str(named), "-m", str(mine)]) == 0
    np.testing.assert_array_equal(read_image(named)[0], first_labels)
    assert predict_main([*args, "-o", str(named), "-m", str(mine), "--second-reader", str(second), "--overwrite"]) == 0
    np.testing.assert_array_equal(read_image(named)[0], labels)
    short = tmp_path / "short" / "bones.nii.gz"  # the built-in model's reader by its short name
    assert predict_main([*args, "-o", str(short), "-m", str(mine), "--second-reader", "builtin-any-contrast"]) == 0
    np.testing.assert_array_equal(read_image(short)[0], labels)

    other = tmp_path / "other_labels"
    shutil.copytree(second, other)
    dataset = json.loads((other / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "femur": 1, "tibia": 2}
    (other / "dataset.json").write_text(json.dumps(dataset))
    refused = tmp_path / "refused" / "bones.nii.gz"
    capsys.readouterr()
    for reader, problem in ((other, "labels"), (tmp_path / "nowhere", "not a trained model folder"), (mine, "the model itself")):
        assert predict_main([*args, "-o", str(refused), "-m", str(mine), "--second-reader", str(reader)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--second-reader {reader}" in err[0] and problem in err[0], err
        assert not refused.parent.exists()


@pytest.mark.parametrize("shares, handed_over", [
    ([0.1], False),             # sure as recorded: the model's reading
    ([0.6, 0.1], False),        # unsure as recorded, sure inverted: the inverted reading
    ([0.6, 0.5, 0.4], True),    # unsure either way: the second reader's
    ([None, None, 0.2], True),  # no bone found either way: the second reader's
])
def test_the_second_reader_reads_only_what_the_model_stays_unsure_of(small_model, monkeypatch, shares, handed_over):
    """The hand-over rule, with the QC's unsure shares given in the order the readings ask for them
    (as recorded, inverted, the second reader's as recorded): the second reader's own probabilities
    (here all femur) make the labels where it reads."""
    import kneeseg.inference.predictor as predictor_module
    from kneeseg.inference.model import load_model
    from kneeseg.inference.predictor import Predictor

    folder = small_model.results / MODEL_DIR
    model = dataclasses.replace(load_model(folder), second_reader=load_model(folder))
    asked = iter(shares)
    monkeypatch.setattr(predictor_module, "uncertain_share", lambda probabilities: next(asked))
    predictor = Predictor(model, tta=False)
    assert predictor.second_reader is not None and not predictor.second_reader.inverted_retry
    predictor.inverted_retry = True  # as for a model that normalises inside the body (the phantom plan's does not)
    monkeypatch.setattr(predictor.second_reader, "_fold_mean",
                        lambda data, inverted=False, clock=None: (np.stack([np.zeros(data.shape[1:], np.float32)] + [
                            np.full(data.shape[1:], float(k == 1), np.float32) for k in range(1, 4)]), True))  # kept inverted
    image, geometry = read_image(_scan(small_model))
    prediction = predictor.predict([image], geometry)
    assert next(asked, "all asked") == "all asked"  # no reading more or fewer than the rule needs
    assert prediction.second_reading == handed_over
    assert prediction.read_inverted == (shares == [0.6, 0.1])
    assert prediction.surer_inverted == handed_over  # the second reader's polarity, reported where it read
    assert (set(np.unique(prediction.labels)) <= {0, 1}) == handed_over  # the reader's all-femur, or the model's bones
    if handed_over:
        assert prediction.unsure_first_reading == shares[0] and prediction.uncertain_share == shares[-1]


@pytest.mark.parametrize("teach, mean_unsure", [(True, 0.6), (False, 0.6), (True, 0.9)])
def test_the_second_reader_teaches_the_model_the_scans_contrast(small_model, monkeypatch, teach, mean_unsure):
    """Where both models normalise inside the body alike, the second reader's labels teach the first
    model (its first fold's network) a contrast curve, the first model reads the scan through it, and
    the probabilities are both readings' mean; with teach_contrast=False (--no-taught-contrast), the
    second reader's alone; and where the mean is far less sure than the second reader's reading
    (``mean_unsure`` against 0.6), the second reader's alone too. The readings here are constant
    fields: the second reader's femur 0.6 (background 0.4), the first model's tibia 1.0, so the
    mean's tibia (0.5) wins."""
    import kneeseg.inference.predictor as predictor_module
    from kneeseg.inference.contrast import MAX_UNSURE_RISE, ContrastCurve, apply_curve
    from kneeseg.inference.model import load_model
    from kneeseg.inference.predictor import Predictor

    folder = small_model.results / MODEL_DIR
    model = dataclasses.replace(load_model(folder), second_reader=load_model(folder))
    predictor = Predictor(model, tta=False, inverted_retry=False, teach_contrast=teach)
    assert predictor.second_reader is not None and not predictor.can_be_taught()  # the phantom plan: not masked
    masked = dataclasses.replace(predictor.config, use_mask_for_norm=[True])  # as the built-in models' plans
    predictor.config = predictor.second_reader.config = masked
    assert predictor.can_be_taught() == teach
    # Every reading unsure of 0.6 (the model is lost) but the mean, the only one with a tibia of 0.5
    monkeypatch.setattr(predictor_module, "uncertain_share",
                        lambda probabilities: mean_unsure if np.isclose(probabilities[2].max(), 0.5) else 0.6)
    field = lambda values, negated: lambda data, inverted=False, clock=None: (np.stack(  # noqa: E731
        [np.full(data.shape[1:], v, np.float32) for v in values]), negated)
    read_by_first = []
    first = field([0.0, 0.0, 1.0, 0.0], False)
    monkeypatch.setattr(predictor, "_fold_mean", lambda data, inverted=False, clock=None: (
        read_by_first.append(data.copy()), first(data))[1])
    monkeypatch.setattr(predictor.second_reader, "_fold_mean", field([0.4, 0.6, 0.0, 0.0], True))  # kept inverted
    curve = ContrastCurve(np.array([-1.0, 1.0], np.float32), np.array([1.0, -1.0], np.float32), 0.0, "inverted")
    fitted = []
    monkeypatch.setattr(predictor_module, "fit_contrast_curve", lambda network, data, teacher, *rest, **kw: (
        fitted.append((network, data.copy(), teacher.copy())), curve)[1])
    image, geometry = read_image(_scan(small_model))
    prediction = predictor.predict([image], geometry, keep_probabilities=True)

    taught = teach and mean_unsure < 0.6 + MAX_UNSURE_RISE
    assert prediction.second_reading and prediction.contrast_taught == taught and prediction.surer_inverted
    bone = prediction.labels != 0
    assert bone.mean() > 0.5  # the fields cover the body's crop
    if teach:
        (network, data, teacher), = fitted
        assert network is predictor.networks[0] and teacher.dtype == np.uint8 and np.all(teacher == 1)  # the femur
        np.testing.assert_allclose(read_by_first[-1], apply_curve(data, curve))  # read through the curve
    if taught:
        assert np.all(prediction.labels[bone] == 2)
        np.testing.assert_allclose(np.median(prediction.probabilities[:, bone], 1), [0.2, 0.3, 0.5, 0.0], atol=1e-5)
    elif teach:  # read through the curve, and the mean far less sure: the second reader's reading
        assert len(read_by_first) == 2 and np.all(prediction.labels[bone] == 1)
        np.testing.assert_allclose(np.median(prediction.probabilities[:, bone], 1), [0.4, 0.6, 0.0, 0.0], atol=1e-5)
    else:
        assert not fitted and len(read_by_first) == 1  # the first reading only
        assert np.all(prediction.labels[bone] == 1)


@pytest.mark.parametrize("shares, kept", [((0.5, 0.3), "negated"), ((0.3, 0.5), "as given"), ((None, 0.6), "negated"),
                                          ((0.4, None), "as given")])
def test_the_second_reader_keeps_the_polarity_it_is_surer_of(small_model, monkeypatch, shares, kept):
    """A second reader of a model that normalises inside the body (air 0) reads the data as given and
    negated and keeps the reading it is less unsure of (``shares``: the QC's unsure share of each, None
    where it found no bone); the data is left as given. A plan that does not (the phantom's) reads it as
    given only."""
    import kneeseg.inference.predictor as predictor_module
    from kneeseg.inference.model import load_model
    from kneeseg.inference.predictor import Predictor
    from kneeseg.preprocessing.preprocess import preprocess_case

    model = load_model(small_model.results / MODEL_DIR)
    predictor = Predictor(dataclasses.replace(model, second_reader=model), tta=False)
    second = predictor.second_reader
    assert second is not None and second.surer_polarity and not predictor.surer_polarity
    image, geometry = read_image(_scan(small_model))
    data = preprocess_case([image], geometry, second.config).data
    given = data.copy()
    readings = {"as given": second._folds(given.copy(), None), "negated": second._folds(-given, None)}
    assert np.abs(readings["as given"] - readings["negated"]).max() > 0.1  # two readings that differ
    probs, negated = second._fold_mean(data)
    np.testing.assert_allclose(probs, readings["as given"], atol=1e-5)  # the phantom plan
    assert not negated

    second.config = dataclasses.replace(second.config, use_mask_for_norm=[True])  # as the built-in models' plans
    asked = iter(shares)
    monkeypatch.setattr(predictor_module, "uncertain_share", lambda probabilities: next(asked))
    probs, negated = second._fold_mean(data)
    np.testing.assert_allclose(probs, readings[kept], atol=1e-5)
    assert negated == (kept == "negated") and next(asked, "both asked") == "both asked"
    np.testing.assert_array_equal(data, given)


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
    says so; with --no-inverted-retry (and no second reader) the model is unsure of it. A non-monotonic
    contrast: read by the any-contrast second reader, which teaches the model that contrast, the knee's
    bones. Noise: lost whoever reads it."""
    from scan_variants import cropped, inverted, thick_slices, with_contrast

    assert second_reader_dir(builtin_model_dir() or Path()) is not None  # the install ships both
    image, geometry = read_image(SHARED / "knee_0000.nii.gz")
    knee, _, grid = thick_slices(image, None, geometry, (1.0, 1.0, 1.0))  # the scan at 1 mm: quick to predict
    # 84 of its 101 mm along S-I (the femur's shaft cut 3 mm above the patella): three windows of the
    # built-in model's patch along that axis instead of four
    knee, _, grid = cropped(knee, None, grid, (slice(2, 86), slice(None), slice(None)))
    rng = np.random.default_rng(0)
    small = (knee.shape[0], knee.shape[1] // 4, knee.shape[2] // 4)  # noise is read four times: a sixteenth of the knee's size
    scans = {"knee": knee, "noise": np.hypot(rng.normal(0, 300, small), rng.normal(0, 300, small)).astype(knee.dtype),
             "inverted": inverted(knee), "non_monotonic": with_contrast(knee, [0, 0.3, 0.6, 0.85, 1.0], [0, 0.05, 0.8, 0.5, 0.15])}
    folder = tmp_path / "scans"
    for name, array in scans.items():
        write_image(array, dataclasses.replace(grid, size=array.shape[::-1]), folder / f"{name}.nii.gz")
    out = tmp_path / "bones"
    assert predict_main(["-i", str(folder), "-o", str(out), "-m", "builtin", "--statistics", "--device", "cpu", "--no-progress"]) == 0
    warned = {name: json.loads((out / f"{name}.statistics.json").read_text())["qc_warnings"] for name in scans}
    assert not any("unsure" in w or "inverted" in w for w in warned["knee"]), warned["knee"]
    assert [w for w in warned["inverted"] if "unsure" in w or "inverted" in w] == [
        next(w for w in warned["inverted"] if w.startswith("read with its contrast inverted"))], warned["inverted"]
    # Noise: no reading kept inverted, and the second reader finds no bone either, or is unsure of it.
    assert not any("inverted" in w for w in warned["noise"])
    assert any(w.startswith(("the model is unsure", "no femur found")) for w in warned["noise"]), warned["noise"]
    for name in ("noise", "non_monotonic"):
        assert any(w.startswith("read by the model's second reader") for w in warned[name]), warned[name]
    # The non-monotonic knee has a body whose contrast the second reader teaches; the noise (all air once its
    # air is zeroed) has none.
    assert [("taught it the scan's contrast" in w) for name in ("noise", "non_monotonic") for w in warned[name]
            if w.startswith("read by the model's second reader")] == [False, True]
    assert not any("second reader" in w for name in ("knee", "inverted") for w in warned[name])
    assert "read with its contrast inverted" in capsys.readouterr().err
    knee_bones, _ = read_image(out / "knee.nii.gz")
    for name, least in (("inverted", 0.9), ("non_monotonic", 0.8)):
        bones, _ = read_image(out / f"{name}.nii.gz")
        for value in (1, 2, 3):  # femur, tibia, patella: the bones of the knee as recorded
            a, b = knee_bones == value, bones == value
            assert 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)) > least, (name, value)

    plain = tmp_path / "plain"
    assert predict_main(["-i", str(folder / "inverted.nii.gz"), "-o", str(plain / "inverted.nii.gz"), "-m", "builtin",
                         "--statistics", "--no-inverted-retry", "--second-reader", "none", "--tta", "none", "--device", "cpu",
                         "--no-progress"]) == 0
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
    # The second reader's card: its own make target and the holdout run of its trainer.
    second = model_card(plans.hardware.machine, plans.configuration("3d_cpu"), list(BONES), 12, 0.9842, 60, 3, holdout,
                        machine_from, table, trainer="kneesegTrainerProtocols")
    assert "# kneeseg built-in model (any-contrast second reader)" in second and "`kneesegTrainerProtocols`" in second
    assert "`make model-any-contrast MODEL_MINUTES=60 MODEL_SEED=3 HOLDOUT=WORKDIR/summary_A_to_B.json " in second
    assert "--seed 3 --machine reference -tr kneesegTrainerProtocols --workdir WORKDIR`" in second
    models = Path(kneeseg.models.__file__).parent
    shipped = (models / "kneebones3dify" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not ABSOLUTE_PATH.search(shipped) and "`make model MODEL_MINUTES=60 MODEL_SEED=0 " in shipped
    shipped = (models / "kneebones3dify_any_contrast" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not ABSOLUTE_PATH.search(shipped) and "`make model-any-contrast MODEL_MINUTES=60 MODEL_SEED=1 " in shipped
