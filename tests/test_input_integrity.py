"""Issue 29, input integrity: bad input is refused by every command that reads it, in one line naming
the file (``prog: error: FILE: problem``), exit != 0, the input untouched and nothing written.

Truncated image files, DICOM series with a missing slice or uneven spacing, two datasets with one
number; and the outputs that were silently wrong: inside-out STL files, the average Hausdorff
distance under two definitions, numpy reprs in messages.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import centroid, make_phantom, path_flags, tree_snapshot
from kneeseg.cli.evaluate import main as evaluate_main
from kneeseg.cli.export_stl import main as stl_main
from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.dataset.layout import DatasetJson, find_dataset
from kneeseg.errors import KneesegError
from kneeseg.io import Geometry, read_image, write_image

DS = "Dataset900_KneePhantom"


def _refused(code: int, capfd, *needles: str) -> str:
    """The command failed with exactly one line on stderr (nothing from ITK either) holding every needle."""
    err = capfd.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert all(n in err[0] for n in needles), err
    assert "np." not in err[0], err
    return err[0]


def _truncate(path, share=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- truncated image files --------------------------------------------------------------------------

@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_read_image_refuses_a_file_shorter_than_its_header(tmp_path, ending):
    g = Geometry((20, 16, 12), (0.5, 0.7, 2.0), (10.0, -20.0, 3.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.random.default_rng(0).integers(0, 1000, (12, 16, 20)).astype(np.int16)
    for compress in (True, False):
        path = tmp_path / f"img{ending}"
        sitk.WriteImage(g.apply_to(sitk.GetImageFromArray(array)), str(path), compress)
        np.testing.assert_array_equal(read_image(path)[0], array)  # complete: read as before
        _truncate(path)
        with pytest.raises(KneesegError, match=rf"img{ending.replace('.', '[.]')}: file is truncated: its header describes"):
            read_image(path)


def test_a_truncated_mhd_names_its_data_file(tmp_path):
    g = Geometry((20, 16, 12), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(g.apply_to(sitk.GetImageFromArray(np.ones((12, 16, 20), np.float32))), str(tmp_path / "a.mhd"), False)
    _truncate(tmp_path / "a.raw")
    with pytest.raises(KneesegError, match="a.mhd: file is truncated: its header describes 15360 bytes, its data file a.raw holds 7680"):
        read_image(tmp_path / "a.mhd")


def _as_nii(dataset_dir):
    """Rewrite a raw dataset's images and labels as uncompressed .nii (dataset.json too)."""
    for path in _files(dataset_dir):
        if path.name.endswith(".nii.gz"):
            array, geometry = read_image(path)
            write_image(array, geometry, path.with_name(path.name[: -len(".gz")]))
            path.unlink()
    ds = DatasetJson.load(dataset_dir / "dataset.json")
    ds.file_ending = ".nii"
    ds.save(dataset_dir / "dataset.json")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_every_command_refuses_a_truncated_image(small_model, tmp_path, capfd, ending):
    """ITK reads half a NIfTI file without a word (the rest zeros): prediction, evaluation, STL export
    and planning refuse it instead, naming the file, and write nothing."""
    paths = small_model
    image, g = read_image(paths.raw / DS / "imagesTs" / "phantom_test_000_0000.nii.gz")
    labels, _ = read_image(paths.raw / DS / "labelsTs" / "phantom_test_000.nii.gz")
    inputs = tmp_path / "inputs"
    scan, label, good = inputs / f"cut_0000{ending}", inputs / f"cut{ending}", inputs / f"good{ending}"
    write_image(image, g, scan)
    write_image(labels, g, label)
    write_image(labels, g, good)
    _truncate(scan)
    _truncate(label)
    before = tree_snapshot(inputs)
    out = tmp_path / "out"

    code = predict_main(["-i", str(scan), "-o", str(out / "pred"), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _refused(code, capfd, f"kneeseg_predict: error: {scan}: file is truncated")
    code = evaluate_main(["-ref", str(good), "-pred", str(label), "-o", str(out / "summary.json"), "--no-progress"])
    _refused(code, capfd, f"kneeseg_evaluate: error: {label}: file is truncated")
    code = evaluate_main(["-ref", str(label), "-pred", str(good), "-o", str(out / "summary.json"), "--no-progress"])
    _refused(code, capfd, f"kneeseg_evaluate: error: {label}: file is truncated")
    code = stl_main([str(label), "-o", str(out / "stl")])
    _refused(code, capfd, f"kneeseg_export_stl: error: {label}: file is truncated")
    assert tree_snapshot(inputs) == before and _files(out) == []

    raw = make_phantom(tmp_path / "data")
    dataset = raw.raw / DS
    if ending == ".nii":
        _as_nii(dataset)
    cut = dataset / "imagesTr" / f"phantom_001_0000{ending}"
    _truncate(cut)
    before = tree_snapshot(dataset)
    for extra in ([], ["--no-verify"]):
        code = pp_main(["--device", "cpu", "--no-progress", *path_flags(raw), *extra])
        _refused(code, capfd, f"kneeseg_plan_and_preprocess: error: {cut}: file is truncated: its header describes")
    assert tree_snapshot(dataset) == before and _files(raw.preprocessed) == []
