"""kneeseg_add_case: corrected labels from 3D Slicer (.seg.nrrd written here with pynrrd, not with
kneeseg's writer), DICOM SEG and label maps into a raw dataset; refusals leave nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_phantom, tree_snapshot, write_dicom_series

import kneeseg.dataset.add_case
import kneeseg.errors
from kneeseg.cli.add_case import main as add_main
from kneeseg.io import Geometry, read_image, write_image
from kneeseg.io.dicomseg import write_dicom_seg

DS = "Dataset900_KneePhantom"
BONES = {"femur": 1, "tibia": 2, "patella": 3}


@pytest.fixture
def scan(tmp_path):
    """A phantom scan and its label (the 'corrected prediction'), in a raw folder with Dataset900, on a
    grid of unequal spacings and permuted, flipped axes (so that a transposed or mirrored placement shows)."""
    paths = make_phantom(tmp_path, n=1)
    image = paths.raw / DS / "imagesTr" / "phantom_000_0000.nii.gz"
    label = paths.raw / DS / "labelsTr" / "phantom_000.nii.gz"
    labels, geometry = read_image(label)
    geometry = Geometry(geometry.size, (2.0, 2.5, 3.0), (-12.0, 30.0, 4.5), (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    write_image(read_image(image)[0], geometry, image)
    write_image(labels, geometry, label)
    return paths, image, labels, geometry


def write_slicer_segmentation(path, layers: list[np.ndarray], segments: list[tuple[str, int, int]], geometry: Geometry,
                              space: str = "left-posterior-superior", layer_keys: bool = True) -> None:
    """A .seg.nrrd as 3D Slicer writes one, made with pynrrd alone: ``layers`` (z, y, x) arrays,
    ``segments`` (name, layer, label value); several layers make a 4D file (Slicer's overlapping segments).
    Without ``layer_keys`` no segment names its layer or label value (Slicer before 4.11)."""
    flip = np.array([-1.0, -1.0, 1.0]) if space == "right-anterior-superior" else np.ones(3)
    directions = (np.asarray(geometry.direction).reshape(3, 3) * np.asarray(geometry.spacing)).T * flip
    data = np.stack([layer.transpose(2, 1, 0) for layer in layers]) if len(layers) > 1 else layers[0].transpose(2, 1, 0)
    header = {"type": "unsigned char", "space": space, "space origin": np.asarray(geometry.origin) * flip, "encoding": "gzip",
              "space directions": directions if len(layers) == 1 else np.vstack([np.full(3, np.nan), directions]),
              "kinds": ["domain"] * 3 if len(layers) == 1 else ["list", "domain", "domain", "domain"]}
    for n, (name, layer, value) in enumerate(segments):
        header.update({f"Segment{n}_ID": f"Segment_{n + 1}", f"Segment{n}_Name": name, f"Segment{n}_Color": "0.5 0.5 0.5"})
        if layer_keys:
            header.update({f"Segment{n}_Layer": str(layer), f"Segment{n}_LabelValue": str(value)})
    nrrd.write(str(path), np.ascontiguousarray(data.astype(np.uint8)), header)


def _itk(path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_a_slicer_segmentation_creates_a_dataset_with_the_models_labels(scan, tmp_path, capsys):
    paths, image, labels, geometry = scan
    seg = tmp_path / "knee.seg.nrrd"
    relabelled = np.select([labels == 1, labels == 2, labels == 3], [5, 7, 9], 0).astype(np.uint8)  # Slicer's own values
    write_slicer_segmentation(seg, [relabelled], [("FEMUR", 0, 5), ("Tibia", 0, 7), ("patella", 0, 9)], geometry,
                              space="right-anterior-superior")
    assert add_main(["-d", "950", "--image", str(image), "--label", str(seg), "-m", "builtin", "--raw", str(paths.raw)]) == 0
    out = capsys.readouterr().out
    assert "created" in out and "added case_000" in out
    folder = paths.raw / "Dataset950_MyScanner"
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, **BONES} and ds["numTraining"] == 1 and ds["file_ending"] == ".nii.gz"
    written, itk_label = _itk(folder / "labelsTr" / "case_000.nii.gz")
    assert np.array_equal(written, labels)
    scan_written, itk_scan = _itk(folder / "imagesTr" / "case_000_0000.nii.gz")
    original = sitk.ReadImage(str(image))
    assert np.array_equal(scan_written, sitk.GetArrayFromImage(original))
    for itk in (itk_label, itk_scan):  # the scan's geometry, read by SimpleITK
        assert np.allclose(itk.GetOrigin(), original.GetOrigin()) and np.allclose(itk.GetSpacing(), original.GetSpacing())
        assert np.allclose(itk.GetDirection(), original.GetDirection())
    # a second case gets the next id, and numTraining follows
    assert add_main(["-d", "950", "--image", str(image), "--label", str(seg), "--raw", str(paths.raw)]) == 0
    assert (folder / "labelsTr" / "case_001.nii.gz").exists()
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    # a number that is taken names that dataset only: another name with it is refused, nothing made
    before = tree_snapshot(paths.raw)
    for refused, what in ((["-d", "Dataset950_Other"], "dataset number 950 is taken"),
                          (["-d", "950", "--name", "Other"], "-d 950 is this dataset, not one named Other"),
                          (["-d", "950", "--name", "Scanner"], "-d 950 is this dataset, not one named Scanner")):
        capsys.readouterr()
        assert add_main([*refused, "--image", str(image), "--label", str(seg), "--raw", str(paths.raw)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0] and "Dataset950_MyScanner" in err[0], err
    assert tree_snapshot(paths.raw) == before


def test_overlapping_layers_are_read_a_boundary_drawn_twice_goes_to_the_later_segment_and_more_is_refused(scan, tmp_path, capsys):
    paths, image, labels, geometry = scan
    first, second = (labels == 1).astype(np.uint8), np.where(labels == 2, 1, 0).astype(np.uint8)
    second[labels == 3] = 2  # the patella beside the tibia, in the second layer
    seg = tmp_path / "layers.seg.nrrd"
    write_slicer_segmentation(seg, [first, second], [("femur", 0, 1), ("tibia", 1, 1), ("patella", 1, 2)], geometry)
    assert add_main(["-d", DS, "--image", str(image), "--label", str(seg), "--case", "layers", "--raw", str(paths.raw)]) == 0
    assert np.array_equal(read_image(paths.raw / DS / "labelsTr" / "layers.nii.gz")[0], labels)
    capsys.readouterr()

    # A few femur voxels drawn into the tibia too (2 % of the tibia: a boundary drawn twice), given to the tibia (listed later)
    rim = second.copy()
    rim.flat[np.flatnonzero(first)[: int(0.02 * np.count_nonzero(labels == 2))]] = 1
    count = int(np.count_nonzero(first.astype(bool) & (rim == 1)))
    assert 0 < count <= 0.05 * np.count_nonzero(labels == 2)
    write_slicer_segmentation(seg, [first, rim], [("femur", 0, 1), ("tibia", 1, 1), ("patella", 1, 2)], geometry)
    assert add_main(["-d", DS, "--image", str(image), "--label", str(seg), "--case", "rim", "--raw", str(paths.raw)]) == 0
    added = read_image(paths.raw / DS / "labelsTr" / "rim.nii.gz")[0]
    expected = labels.copy()
    expected[(first.astype(bool)) & (rim == 1)] = 2
    assert np.array_equal(added, expected)
    assert f"segments 'femur' and 'tibia' overlap in {count} voxel(s); given to 'tibia'" in capsys.readouterr().err

    overlap = second.copy()
    overlap.flat[np.flatnonzero(first)[: int(0.2 * np.count_nonzero(labels == 2))]] = 1  # the tibia drawn far into the femur
    count = int(np.count_nonzero(first.astype(bool) & (overlap == 1)))
    assert count > 0.05 * np.count_nonzero(labels == 2)
    write_slicer_segmentation(seg, [first, overlap], [("femur", 0, 1), ("tibia", 1, 1), ("patella", 1, 2)], geometry)
    before = tree_snapshot(paths.raw)
    assert add_main(["-d", DS, "--image", str(image), "--label", str(seg), "--raw", str(paths.raw)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"segments 'femur' and 'tibia' overlap in {count} voxel(s)" in err[0] and str(seg) in err[0]
    assert tree_snapshot(paths.raw) == before


def test_a_segmentation_of_slicer_before_4_11_holds_one_segment_per_layer(scan, tmp_path):
    paths, image, labels, geometry = scan
    seg = tmp_path / "old.seg.nrrd"
    layers = [(labels == value).astype(np.uint8) for value in (1, 2, 3)]
    write_slicer_segmentation(seg, layers, [("Femur", 0, 1), ("Tibia", 1, 1), ("Patella", 2, 1)], geometry, layer_keys=False)
    assert add_main(["-d", DS, "--image", str(image), "--label", str(seg), "--case", "old", "--raw", str(paths.raw)]) == 0
    assert np.array_equal(read_image(paths.raw / DS / "labelsTr" / "old.nii.gz")[0], labels)


def test_unknown_segment_names_are_refused_listing_the_known_ones(scan, tmp_path, capsys):
    paths, image, labels, geometry = scan
    seg = tmp_path / "knee.seg.nrrd"
    write_slicer_segmentation(seg, [labels], [("femur", 0, 1), ("Segment_2", 0, 2), ("patella", 0, 3)], geometry)
    assert add_main(["-d", "951", "--image", str(image), "--label", str(seg), "-m", "builtin", "--raw", str(paths.raw)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'Segment_2' not among the dataset's labels (known: femur, tibia, patella)" in err[0]
    assert not list(paths.raw.glob("Dataset951*"))  # the dataset it would have made is not there


def test_a_label_off_the_scans_grid_is_refused_naming_both_files_and_a_cropped_one_is_placed(scan, tmp_path, capsys):
    paths, image, labels, geometry = scan
    shifted = Geometry(geometry.size, geometry.spacing, (geometry.origin[0] + 1.0, *geometry.origin[1:]), geometry.direction)
    off = tmp_path / "shifted.nii.gz"
    write_image(labels, shifted, off)
    before = tree_snapshot(paths.raw)
    assert add_main(["-d", DS, "--image", str(image), "--label", str(off), "--raw", str(paths.raw)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{off}: does not lie on the grid of {image} (origin" in err[0]
    assert tree_snapshot(paths.raw) == before
    # Slicer may save a segmentation cropped to its extent: a box on the scan's voxels is placed where it lies
    box = np.argwhere(labels > 0)
    low, high = box.min(0), box.max(0) + 1
    corner_mm = np.asarray(geometry.origin) + np.reshape(geometry.direction, (3, 3)) @ (np.asarray(geometry.spacing) * low[::-1])
    corner = Geometry(tuple(int(v) for v in (high - low)[::-1]), geometry.spacing, tuple(float(v) for v in corner_mm),
                      geometry.direction)
    cropped = tmp_path / "cropped.seg.nrrd"
    write_slicer_segmentation(cropped, [labels[low[0]:high[0], low[1]:high[1], low[2]:high[2]]],
                              [("femur", 0, 1), ("tibia", 0, 2), ("patella", 0, 3)], corner)
    assert add_main(["-d", DS, "--image", str(image), "--label", str(cropped), "--case", "cropped", "--raw", str(paths.raw)]) == 0
    assert np.array_equal(_itk(paths.raw / DS / "labelsTr" / "cropped.nii.gz")[0], labels)


def test_a_dicom_seg_of_the_series_is_added_frame_by_frame(scan, tmp_path):
    paths, image, labels, geometry = scan
    series = tmp_path / "series"
    write_dicom_series(image, series)
    seg = tmp_path / "bones.dcm"
    write_dicom_seg(seg, labels, series, BONES)  # kneeseg's own writer (highdicom): only the slices with bone
    assert add_main(["-d", "952", "--image", str(series), "--label", str(seg), "-m", "builtin", "--raw", str(paths.raw)]) == 0
    folder = paths.raw / "Dataset952_MyScanner"
    written, itk = _itk(folder / "labelsTr" / "case_000.nii.gz")
    assert np.array_equal(written, labels)
    series_image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    assert np.allclose(itk.GetOrigin(), series_image.GetOrigin()) and np.allclose(itk.GetSpacing(), series_image.GetSpacing())
    # a SEG of that series does not fit another scan of another frame of reference and grid
    other = tmp_path / "other.nii.gz"
    write_image(np.ones((10, 20, 20), np.int16), Geometry((20, 20, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                                                          (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)), other)
    with pytest.raises(kneeseg.errors.KneesegError, match="does not lie on the grid of"):
        kneeseg.dataset.add_case.add_case(paths.raw, "952", [other], seg)


def test_label_maps_are_checked_existing_cases_kept_and_a_failed_write_leaves_nothing(scan, tmp_path, capsys, monkeypatch):
    paths, image, labels, geometry = scan
    wrong = tmp_path / "wrong.nii.gz"
    write_image(np.where(labels == 3, 4, labels).astype(np.uint8), geometry, wrong)
    args = ["-d", DS, "--image", str(image), "--raw", str(paths.raw)]
    before = tree_snapshot(paths.raw)
    assert add_main([*args, "--label", str(wrong)]) == 2
    assert "holds value(s) 4, not among the dataset's labels" in capsys.readouterr().err
    good = tmp_path / "good.nii.gz"
    write_image(labels, geometry, good)
    assert add_main([*args, "--label", str(good), "--case", "phantom_000"]) == 2
    assert "case 'phantom_000' is already in Dataset900_KneePhantom; use --overwrite" in capsys.readouterr().err
    assert tree_snapshot(paths.raw) == before

    calls = []

    def failing_write(array, grid, path, *a, **k):  # the label, written after the scan, fails
        calls.append(path)
        if "_0000" not in path.name:
            raise kneeseg.errors.KneesegError(f"{path}: disk full")
        return write_image(array, grid, path, *a, **k)

    monkeypatch.setattr(kneeseg.dataset.add_case, "write_image", failing_write)
    assert add_main([*args, "--label", str(good)]) == 2
    assert "disk full" in capsys.readouterr().err
    assert tree_snapshot(paths.raw) == before and len(calls) == 2
    assert not [p for p in (paths.raw / DS).iterdir() if p.name.startswith(".")]  # no staging folder or lock left
    assert add_main(["-d", "953", "--image", str(image), "--label", str(good), "-m", "builtin", "--raw", str(paths.raw)]) == 2
    assert not list(paths.raw.glob("Dataset953*"))  # a dataset made for the failed case is removed again
    monkeypatch.undo()
    assert add_main([*args, "--label", str(good), "--case", "phantom_000", "--overwrite"]) == 2  # the scan would replace itself
    assert "would replace the input" in capsys.readouterr().err
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(image.read_bytes())
    replace, failed = os.replace, []

    def failing_replace(source, target):  # the new label cannot be moved in: the old case must come back whole
        if Path(target).parent.name == "labelsTr" and Path(source).parent.name != "labelsTr" and not failed:
            failed.append(target)
            raise kneeseg.errors.KneesegError(f"{target}: disk full")
        return replace(source, target)

    other = tmp_path / "other.nii.gz"  # another correction: what comes back must be the old case, not this
    write_image(np.where(labels == 3, 0, labels).astype(np.uint8), geometry, other)
    before = tree_snapshot(paths.raw)
    monkeypatch.setattr(kneeseg.dataset.add_case.os, "replace", failing_replace)
    with pytest.raises(kneeseg.errors.KneesegError, match="disk full"):
        kneeseg.dataset.add_case.add_case(paths.raw, DS, [copy], other, case_id="phantom_000", overwrite=True)
    monkeypatch.undo()
    assert failed and tree_snapshot(paths.raw) == before
    assert not [p for p in (paths.raw / DS).iterdir() if p.name.startswith(".")]  # no staging folder left
    assert add_main(["-d", DS, "--image", str(copy), "--label", str(good), "--case", "phantom_000", "--overwrite",
                     "--raw", str(paths.raw)]) == 0
    assert json.loads((paths.raw / DS / "dataset.json").read_text())["numTraining"] == 1

