"""Nothing a person made is replaced without --overwrite; one writer per study folder; a failed
command leaves nothing new; every output checked before the model is loaded; the API changes
none of the option objects it is given. Each case as a careless user would meet it."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, path_flags, tree_snapshot

from kneeseg import api
from kneeseg.cli.evaluate import main as evaluate_main
from kneeseg.cli.export_stl import main as stl_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.inference.outputs import StudyLock
from kneeseg.inference.study import PredictionOptions, StudyOptions
from kneeseg.io import read_image, write_image
from kneeseg.io.atomic import atomic_path, temporary_path

DS = "Dataset900_KneePhantom"
QUICK = ["--device", "cpu", "--tta", "none", "--no-progress"]


def _one_line_error(code: int, capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and all(p in err[0] for p in parts), (code, err)
    return err[0]


def _dataset(small_model, tmp_path) -> Path:
    """A dataset folder with two scans and their hand-drawn labels (copies of the phantom's test cases)."""
    dataset = tmp_path / DS
    shutil.copytree(small_model.raw / DS / "imagesTs", dataset / "imagesTr")
    shutil.copytree(small_model.raw / DS / "labelsTs", dataset / "labelsTr")
    shutil.copy(small_model.raw / DS / "dataset.json", dataset / "dataset.json")
    return dataset


def _predict(small_model, inp, out, *flags) -> int:
    return predict_main(["-i", str(inp), "-o", str(out), *QUICK, *flags, *path_flags(small_model)])


def test_predicting_into_a_datasets_labels_replaces_no_hand_drawn_label(small_model, tmp_path, capsys):
    dataset = _dataset(small_model, tmp_path)
    before = tree_snapshot(dataset)
    code = _predict(small_model, dataset / "imagesTr", dataset / "labelsTr")
    _one_line_error(code, capsys, f"{dataset / 'labelsTr' / 'phantom_test_000.nii.gz'}: exists and kneeseg has no record "
                                  "of writing it; use --overwrite to replace it")
    assert tree_snapshot(dataset) == before
    # Asked for: replaced, and recorded as kneeseg's from then on.
    assert _predict(small_model, dataset / "imagesTr", dataset / "labelsTr", "--overwrite") == 0
    labels = dataset / "labelsTr" / "phantom_test_000.nii.gz"
    assert labels.read_bytes() != before["labelsTr/phantom_test_000.nii.gz"]
    assert sitk.ReadImage(str(labels)).GetSize() == (48, 48, 48)
    with open(dataset / "labelsTr" / "study.csv", encoding="utf-8", newline="") as f:
        assert sorted(row["case"] for row in csv.DictReader(f)) == ["phantom_test_000", "phantom_test_001"]


@pytest.mark.parametrize("name,text", [("phantom_test_001.nii.gz", None), ("labels.ctbl", "0 bg 0 0 0 0\n1 my_femur 9 9 9 255\n"),
                                       ("labels.itksnap.txt", '    1   9   9   9   1  1  1    "my femur"\n'),
                                       ("study.csv", "patient,age\nA,61\n"), ("statistics.csv", "patient,volume\nA,3\n")])
def test_a_folder_holding_files_kneeseg_did_not_write_is_refused(small_model, tmp_path, capsys, name, text):
    """An output folder with a label map, label tables, a study table or a statistics table of the
    user's under the names kneeseg would write: refused, each byte kept, nothing added."""
    scans = small_model.raw / DS / "imagesTs"
    out = tmp_path / "mine"
    out.mkdir()
    if text is None:  # a label map drawn by hand
        shutil.copy(small_model.raw / DS / "labelsTs" / name, out / name)
    else:
        (out / name).write_text(text, encoding="utf-8")
    before = tree_snapshot(out)
    code = _predict(small_model, scans, out, "--statistics")
    _one_line_error(code, capsys, f"{out / name}: exists and kneeseg has no record of writing it; use --overwrite")
    assert tree_snapshot(out) == before


def test_an_existing_output_file_is_replaced_only_with_overwrite(small_model, tmp_path, capsys):
    scan = small_model.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    manual = tmp_path / "my_manual_seg.nii.gz"
    shutil.copy(small_model.raw / DS / "labelsTs" / "phantom_test_000.nii.gz", manual)
    before = tree_snapshot(tmp_path)
    code = _predict(small_model, scan, manual)
    _one_line_error(code, capsys, f"{manual}: exists and kneeseg has no record of writing it; use --overwrite to replace it")
    assert tree_snapshot(tmp_path) == before
    # Label descriptions beside it that are the user's are not replaced either.
    (tmp_path / "bones.ctbl").write_text("1 mine 1 2 3 255\n", encoding="utf-8")
    before = tree_snapshot(tmp_path)
    code = _predict(small_model, scan, tmp_path / "bones.nii.gz")
    _one_line_error(code, capsys, f"{tmp_path / 'bones.ctbl'}: exists and kneeseg has no record")
    assert tree_snapshot(tmp_path) == before
    assert _predict(small_model, scan, manual, "--overwrite") == 0
    assert manual.read_bytes() != before[manual.name] and sitk.ReadImage(str(manual)).GetSize() == (48, 48, 48)


def test_a_hand_corrected_label_map_of_a_study_is_kept(small_model, tmp_path, capsys):
    """A label map kneeseg wrote and a person corrected since is theirs: a rerun with the same options
    keeps it (the case is done), one with other options refuses to replace it."""
    scans = small_model.raw / DS / "imagesTs"
    out = tmp_path / "pred"
    assert _predict(small_model, scans, out) == 0
    corrected = out / "phantom_test_001.nii.gz"
    labels, geometry = read_image(corrected)
    write_image(np.where(labels == 3, 0, labels), geometry, corrected)  # the patella erased by hand
    before = tree_snapshot(out)
    capsys.readouterr()
    assert _predict(small_model, scans, out) == 0
    assert "2 of 2 case(s) already made" in capsys.readouterr().err and tree_snapshot(out) == before
    code = _predict(small_model, scans, out, "--step", "0.75")
    _one_line_error(code, capsys, f"{corrected}: exists and kneeseg has no record of writing it")
    assert tree_snapshot(out) == before


def test_a_case_begun_by_a_killed_run_is_kneesegs_to_redo(small_model, tmp_path, capsys):
    """A run killed between a case's label map and its row leaves the row begun (no signature): the
    next run redoes that case without asking for --overwrite."""
    scans = small_model.raw / DS / "imagesTs"
    out = tmp_path / "pred"
    assert _predict(small_model, scans, out) == 0
    record = out / "study.csv"
    with open(record, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1].update(signature="", output_sha256="")  # as StudyRecord.begin leaves a case not finished
    with open(record, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    labels, geometry = read_image(out / "phantom_test_001.nii.gz")
    write_image(labels[::-1].copy(), geometry, out / "phantom_test_001.nii.gz")  # whatever the killed run wrote
    capsys.readouterr()
    assert _predict(small_model, scans, out) == 0
    assert "1 of 2 case(s) already made" in capsys.readouterr().err
    np.testing.assert_array_equal(read_image(out / "phantom_test_001.nii.gz")[0], labels)
    with open(record, encoding="utf-8", newline="") as f:
        assert all(row["signature"] and row["output_sha256"] for row in csv.DictReader(f))


def test_evaluate_never_replaces_its_inputs_nor_a_file_it_did_not_write(small_model, tmp_path, capsys):
    dataset = _dataset(small_model, tmp_path)
    labels = dataset / "labelsTr"
    before = tree_snapshot(tmp_path)
    common = ["-ref", str(labels), "-pred", str(labels), "--no-progress"]
    for flags in ([], ["--overwrite"]):  # its own input: never
        code = evaluate_main([*common, "--dataset-json", str(dataset / "dataset.json"), "-o", str(dataset / "dataset.json"), *flags])
        _one_line_error(code, capsys, f"{dataset / 'dataset.json'}: would replace the input")
    code = evaluate_main([*common, "-o", str(dataset / "dataset.json")])  # a dataset's dataset.json, not given
    _one_line_error(code, capsys, f"{dataset / 'dataset.json'}: exists and kneeseg has no record of writing it; use --overwrite")
    assert tree_snapshot(tmp_path) == before
    # Its own summary of an earlier run is replaced without asking.
    summary = tmp_path / "eval" / "summary.json"
    assert evaluate_main([*common, "-o", str(summary)]) == 0
    assert evaluate_main([*common, "-o", str(summary)]) == 0
    assert json.loads(summary.read_text())["mean"]["all_bones"]["dice"] == 1.0


def test_a_failed_evaluation_leaves_nothing_new(small_model, tmp_path, capsys):
    labels = _dataset(small_model, tmp_path) / "labelsTr"
    (tmp_path / "blocker").write_text("a file where the overlays folder should be")
    before = tree_snapshot(tmp_path)
    summary = tmp_path / "eval" / "summary.json"
    common = ["-ref", str(labels), "-pred", str(labels), "-o", str(summary), "--no-progress"]
    code = evaluate_main([*common, "--overlays", str(tmp_path / "blocker" / "qc")])
    _one_line_error(code, capsys, f"{tmp_path / 'blocker' / 'qc'}: cannot create output folder")
    assert tree_snapshot(tmp_path) == before and not (tmp_path / "eval").exists()
    # The overlays fail half-way (the second case's scan is unreadable): the first case's pictures go too.
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(small_model.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz", images)
    (images / "phantom_test_001_0000.nii.gz").write_bytes(b"not an image")
    before = tree_snapshot(tmp_path)
    code = evaluate_main([*common, "--overlays", str(tmp_path / "qc"), "--images", str(images)])
    _one_line_error(code, capsys, "phantom_test_001_0000.nii.gz")
    assert tree_snapshot(tmp_path) == before and not (tmp_path / "qc").exists() and not (tmp_path / "eval").exists()


def test_export_stl_replaces_its_own_meshes_and_no_others(small_model, tmp_path, capsys):
    label = small_model.raw / DS / "labelsTs" / "phantom_test_000.nii.gz"
    out = tmp_path / "stl"
    assert stl_main([str(label), "-o", str(out)]) == 0
    assert stl_main([str(label), "-o", str(out)]) == 0  # its own meshes: replaced
    (out / "tibia.stl").write_bytes(b"solid my_tibia\nendsolid my_tibia\n")  # a mesh from elsewhere
    before = tree_snapshot(out)
    code = stl_main([str(label), "-o", str(out)])
    _one_line_error(code, capsys, f"{out / 'tibia.stl'}: exists and kneeseg has no record of writing it")
    assert tree_snapshot(out) == before
    assert stl_main([str(label), "-o", str(out), "--overwrite"]) == 0
    assert (out / "tibia.stl").read_bytes()[:18] == b"SPACE=LPS kneeseg "


def test_one_writer_per_study_folder(small_model, tmp_path, capsys):
    """A second kneeseg_predict into a folder another is writing into is refused, naming that
    process, and writes nothing; the parts of a shared study write side by side."""
    scans = small_model.raw / DS / "imagesTs"
    out = tmp_path / "pred"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from pathlib import Path
        from kneeseg.inference.outputs import StudyLock
        with StudyLock(Path(sys.argv[1])):
            print("held", flush=True)
            sys.stdin.read()
        """), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_snapshot(tmp_path)
        code = _predict(small_model, scans, out)
        _one_line_error(code, capsys, f"{out}: another kneeseg_predict is writing into this folder (process {holder.pid})")
        code = _predict(small_model, scans, out, "--num-parts", "2", "--part-id", "0")
        _one_line_error(code, capsys, f"(process {holder.pid})")
        assert tree_snapshot(tmp_path) == before
    finally:
        holder.communicate("")
    with StudyLock(out, "_part1of2"):  # a part of the study is being written: the whole study waits, the other part goes on
        code = _predict(small_model, scans, out)
        _one_line_error(code, capsys, f"{out}: another kneeseg_predict is writing into this folder (process {os.getpid()})")
        assert _predict(small_model, scans, out, "--num-parts", "2", "--part-id", "0") == 0
    assert _predict(small_model, scans, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.ctbl", "labels.itksnap.txt", "phantom_test_000.nii.gz",
                                                     "phantom_test_001.nii.gz", "study.csv", "study_part0of2.csv"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_go_with_a_failure_a_signal_or_the_next_run(small_model, tmp_path, capsys):
    # An exception or Ctrl-C in the middle of a write: the temporary file goes, the target is not made.
    target = tmp_path / "a" / "knee.nii.gz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not any((tmp_path / "a").iterdir())
    # SIGTERM (a kill, a scheduler's time limit) to a kneeseg command: the same, exit 143.
    script = textwrap.dedent("""
        import os, signal, sys, time
        from kneeseg.errors import cli_entry
        from kneeseg.io import atomic_path

        @cli_entry("kneeseg_test")
        def main(argv):
            with atomic_path(sys.argv[1]) as tmp:
                tmp.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)

        raise SystemExit(main())
        """)
    run = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 128 + signal.SIGTERM and "kneeseg_test: terminated" in run.stderr
    assert not any((tmp_path / "a").iterdir())
    # SIGKILL leaves one behind: the next run into the folder removes it; a live process's stays.
    out = tmp_path / "pred"
    out.mkdir()
    stale = temporary_path(out / "phantom_test_000.nii.gz")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}.", f"-{_dead_pid()}."))
    stale.write_bytes(b"")
    live = temporary_path(out / "other.nii.gz")  # this process is alive
    live.write_bytes(b"")
    assert _predict(small_model, small_model.raw / DS / "imagesTs", out) == 0
    assert not stale.exists() and live.exists()


def test_an_upper_case_ending_is_written_in_its_format(small_model, tmp_path):
    scan = small_model.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    out = tmp_path / "OUT.NII.GZ"
    assert _predict(small_model, scan, out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT.NII.GZ", "OUT.ctbl", "OUT.itksnap.txt"]
    with gzip.open(out) as f:  # a gzipped NIfTI-1 file, by its bytes
        assert f.read(348)[344:348] == b"n+1\0"
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(scan))
    assert written.GetSize() == source.GetSize() and set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1, 2, 3}
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, get)(), getattr(source, get)(), atol=1e-5)


def test_outputs_are_checked_before_the_model_is_loaded(small_model, tmp_path, capsys):
    """Each wrong output is named before kneeseg looks at the model: here there is none (-m names no
    folder), so an error about the output proves the order."""
    scan = small_model.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz"
    (tmp_path / "blocker").write_text("a file where a folder should be")
    (tmp_path / "folder.nii.gz").mkdir()
    long_name = tmp_path / ("k" * 240 + ".nii.gz")
    before = tree_snapshot(tmp_path)
    for out, flags, message in ((tmp_path / "blocker" / "x.nii.gz", [], "cannot create output folder"),
                                (tmp_path / "folder.nii.gz", [], "is a folder, and its name ends like an output file"),
                                (long_name, [], "file name too long: 247 bytes, where at most"),
                                (tmp_path / "bones.stl", [], "cannot write a label map as '.stl'"),
                                (tmp_path / "ok.nii.gz", ["--overlays", str(tmp_path / "blocker")], "exists and is not a folder"),
                                (tmp_path / "ok.nii.gz", ["--stl", str(tmp_path / "blocker" / "stl")], "cannot create output folder"),
                                (scan, [], "would replace the input")):
        code = predict_main(["-i", str(scan), "-o", str(out), "-m", str(tmp_path / "no_model"), *QUICK, *flags])
        shown = out if "blocker" not in " ".join(flags) else Path(flags[-1])
        _one_line_error(code, capsys, f"{shown}: {message}")
    assert tree_snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "folder.nii.gz"]


def test_the_api_takes_option_objects_and_changes_none(small_model, tmp_path):
    options = PredictionOptions(tta=False, progress=False)
    study = StudyOptions(statistics=True)
    kept = dataclasses.asdict(options), dataclasses.asdict(study)
    written = api.predict(small_model.raw / DS / "imagesTs", tmp_path / "pred", small_model, options=options, study=study)
    assert sorted(p.name for p in written) == ["phantom_test_000.nii.gz", "phantom_test_001.nii.gz"]
    assert (tmp_path / "pred" / "statistics.csv").exists()
    assert (dataclasses.asdict(options), dataclasses.asdict(study)) == kept
