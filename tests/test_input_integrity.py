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
from conftest import centroid, make_phantom, path_flags, physical_to_index, tree_snapshot

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
        code = pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(raw), *extra])
        _refused(code, capfd, f"kneeseg_plan_and_preprocess: error: {cut}: file is truncated: its header describes")
    assert tree_snapshot(dataset) == before and _files(raw.preprocessed) == []


# -- DICOM series -------------------------------------------------------------------------------------

def _write_dicom_series(folder, array, spacing=(0.8, 0.7, 3.0), origin=(-10.0, 5.0, 20.0), z_positions=None):
    """A synthetic MR series, one file per slice, slice k at z_positions[k] (default: evenly spaced)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.29"
    for k, plane in enumerate(array):
        z = origin[2] + k * spacing[2] if z_positions is None else z_positions[k]
        image = sitk.GetImageFromArray(plane.astype(np.int16))
        image.SetSpacing(spacing[:2])
        for tag, value in (("0008|0060", "MR"), ("0020|000d", uid), ("0020|000e", uid + ".1"),
                           ("0008|0018", f"{uid}.1.{k + 1}"), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"{origin[0]:.6f}\\{origin[1]:.6f}\\{z:.6f}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", str(spacing[2])),
                           ("0028|0030", f"{spacing[1]}\\{spacing[0]}")):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_with_a_missing_or_uneven_slice_is_refused(small_model, tmp_path, capfd):
    paths = small_model
    array = np.arange(10 * 6 * 5).reshape(10, 6, 5)
    whole = tmp_path / "whole"
    _write_dicom_series(whole, array)
    back, geometry = read_image(whole)  # complete: read in position order with its spacing
    np.testing.assert_array_equal(back, array)
    assert geometry.spacing == pytest.approx((0.8, 0.7, 3.0)) and geometry.origin == pytest.approx((-10.0, 5.0, 20.0))

    gap = tmp_path / "gap"
    _write_dicom_series(gap, array)
    (gap / "slice_004.dcm").unlink()
    before = tree_snapshot(gap)
    out = tmp_path / "out"
    code = predict_main(["-i", str(gap), "-o", str(out), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _refused(code, capfd, f"kneeseg_predict: error: {gap}: DICOM series has a missing slice: expected slices 3 mm apart, "
                          "found 6 mm between slices slice_003.dcm and slice_005.dcm")
    assert tree_snapshot(gap) == before and _files(out) == []

    uneven = tmp_path / "uneven"
    z = [20.0 + 3.0 * k for k in range(10)]
    z[6:] = [v + 1.2 for v in z[6:]]  # one gap of 4.2 mm among 3 mm gaps
    _write_dicom_series(uneven, array, z_positions=z)
    code = predict_main(["-i", str(uneven), "-o", str(out), "--device", "cpu", "--no-progress", *path_flags(paths)])
    _refused(code, capfd, f"{uneven}: DICOM series has uneven slice spacing: expected slices 3 mm apart, "
                          "found 4.2 mm between slices slice_005.dcm and slice_006.dcm")
    assert _files(out) == []

    repeated = tmp_path / "repeated"
    _write_dicom_series(repeated, array, z_positions=[20.0 + 3.0 * min(k, 8) for k in range(10)])
    with pytest.raises(KneesegError, match="slices slice_008.dcm and slice_009.dcm lie at the same position"):
        read_image(repeated)


# -- two datasets with one number ----------------------------------------------------------------------

def test_two_datasets_with_the_same_number_are_ambiguous(tmp_path, capfd):
    paths = make_phantom(tmp_path, n=2, name="Dataset900_A")
    make_phantom(tmp_path, n=2, name="Dataset900_B")
    before = tree_snapshot(paths.raw)
    code = pp_main(["-d", "900", "--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(paths)])
    _refused(code, capfd, f"kneeseg_plan_and_preprocess: error: {paths.raw}: dataset '900' is ambiguous "
                          "(Dataset900_A, Dataset900_B); give the full folder name with -d")
    assert tree_snapshot(paths.raw) == before and _files(paths.preprocessed) == []
    assert find_dataset(paths.raw, "Dataset900_B") == "Dataset900_B" and find_dataset(paths.raw, "A") == "Dataset900_A"

    # Prediction resolves -d in the results folder with the same function.
    for name in ("Dataset900_A", "Dataset900_B"):
        (paths.results / name).mkdir(parents=True)
    scan = paths.raw / "Dataset900_A" / "imagesTr" / "phantom_000_0000.nii.gz"
    code = predict_main(["-i", str(scan), "-o", str(tmp_path / "out"), "-d", "900", "--device", "cpu", "--no-progress",
                         *path_flags(paths)])
    _refused(code, capfd, "kneeseg_predict: error:", "dataset '900' is ambiguous (Dataset900_A, Dataset900_B)")
    assert not (tmp_path / "out").exists()


# -- STL orientation and placement ----------------------------------------------------------------------

def _stl_normals(path):
    data = path.read_bytes()
    count = struct.unpack("<I", data[80:84])[0]
    records = np.frombuffer(data[84:], dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=count)
    return records["n"].astype(np.float64)


@pytest.mark.parametrize("direction", [(0, 1, 0, -1, 0, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, 0, -1, 0, 1, 0), (0, 0, 1, 0, 1, 0, 1, 0, 0)],
                         ids=["rotated-det+1", "mirrored-det-1", "coronal-det+1", "swapped-det-1"])
def test_stl_normals_point_out_of_the_bone_and_the_mesh_sits_on_its_voxels(tmp_path, capfd, direction):
    """Checked with an independent mesh library (trimesh): positive volume, consistent winding, facet
    normals outward, for direction matrices of determinant +1 and -1; each mesh's centroid lies on the
    centroid of its voxels in scanner (LPS) space."""
    import trimesh
    paths = make_phantom(tmp_path, n=1)
    labels, phantom = read_image(paths.raw / DS / "labelsTr" / "phantom_000.nii.gz")
    geometry = Geometry(phantom.size, (2.5, 2.0, 3.0), (-40.0, 25.0, 110.0), tuple(float(v) for v in direction))
    seg = tmp_path / "seg.nii.gz"
    write_image(labels, geometry, seg)
    assert stl_main([str(seg), "-o", str(tmp_path / "stl")]) == 0
    capfd.readouterr()
    for name, value in (("femur", 1), ("tibia", 2), ("patella", 3)):
        path = tmp_path / "stl" / f"{name}.stl"
        mesh = trimesh.load(str(path), file_type="stl", process=True)
        voxels = float((labels == value).sum() * np.prod(geometry.spacing))
        assert mesh.is_watertight and mesh.is_winding_consistent, name
        assert mesh.volume > 0 and abs(mesh.volume / voxels - 1) < 0.08, (name, mesh.volume, voxels)
        stored = _stl_normals(path)
        from_winding = mesh.face_normals  # trimesh's own, from the vertex order
        assert len(stored) == len(from_winding)
        assert np.mean(np.einsum("ij,ij->i", stored, from_winding) > 0.99) > 0.999, name  # the file's normals agree
        # Outward, judged on the voxels: a step of one voxel along a facet's normal leaves the bone.
        step = mesh.triangles_center + stored * max(geometry.spacing)
        zyx = np.clip(np.round(physical_to_index(step, geometry)[:, ::-1]).astype(int), 0, np.array(labels.shape) - 1)
        assert np.mean(labels[tuple(zyx.T)] != value) > 0.95, name
        # Where the voxels are, in scanner space.
        expected = geometry.index_to_physical(centroid(labels == value)[None, ::-1])[0]
        assert np.linalg.norm(mesh.center_mass - expected) < max(geometry.spacing), (name, mesh.center_mass, expected)


# -- average Hausdorff distance under both definitions, through the CLI ---------------------------------

def test_evaluate_reports_both_average_hausdorff_definitions(tmp_path, capfd):
    g = Geometry((12, 12, 12), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ref, pred = np.zeros((12, 12, 12), np.uint8), np.zeros((12, 12, 12), np.uint8)
    ref[2:4, 4:6, 4:6] = 1  # z 2-3
    pred[5:6, 4:6, 4:6] = 1  # z 5: one empty slice (z 4) between the boxes; z spacing 2 mm
    write_image(ref, g, tmp_path / "ref.nii.gz")
    write_image(pred, g, tmp_path / "pred.nii.gz")
    assert evaluate_main(["-ref", str(tmp_path / "ref.nii.gz"), "-pred", str(tmp_path / "pred.nii.gz"),
                          "--dataset-json", str(_dataset_json(tmp_path)), "-o", str(tmp_path / "s.json"),
                          "--no-progress"]) == 0
    m = json.loads((tmp_path / "s.json").read_text())["per_case"][0]["metrics"]["bone"]
    # prediction -> reference: every voxel 2 slices (4 mm) away; reference -> prediction: 4 voxels at
    # 4 mm, 4 at 6 mm, mean 5 mm. kneeseg's: the larger, 5; the paper's (pymia, ITK): the mean, 4.5.
    assert m["avg_hausdorff_max"] == pytest.approx(5.0) and m["avg_hausdorff_mean"] == pytest.approx(4.5)
    assert "avg_hausdorff" not in m
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert "avg_hausdorff_max" in header and "avg_hausdorff_mean" in header
    assert "avgHD max 5.0000 / mean 4.5000 mm" in capfd.readouterr().out


def _dataset_json(folder):
    ds = DatasetJson({"0": "T2"}, {"background": 0, "bone": 1}, 1)
    ds.save(folder / "dataset.json")
    return folder / "dataset.json"


# -- plain numbers in messages ----------------------------------------------------------------------------

def test_messages_print_plain_numbers(tmp_path, capfd):
    g = Geometry((8, 8, 8), (0.5, 0.5, 0.5), (1.5, 0.0, -3.25), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(np.zeros((8, 8, 8), np.uint8), g, tmp_path / "ref" / "a.nii.gz")
    write_image(np.zeros((8, 8, 8), np.uint8), Geometry(g.size, (0.5, 0.5, 0.75), g.origin, g.direction),
                tmp_path / "pred" / "a.nii.gz")
    code = evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(tmp_path / "s.json"),
                          "--no-progress"])
    line = _refused(code, capfd, "geometry does not match the reference a.nii.gz (spacing (0.5, 0.5, 0.75) differs from (0.5, 0.5, 0.5))")
    assert "np." not in line and "float64" not in line
    write_image(np.zeros((8, 8, 8), np.uint8), Geometry(g.size, g.spacing, (1.5, 0.0, -3.0), g.direction),
                tmp_path / "pred" / "a.nii.gz")
    code = evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(tmp_path / "s.json"),
                          "--no-progress"])
    _refused(code, capfd, "(origin (1.5, 0.0, -3.0) differs from (1.5, 0.0, -3.25))")
    assert not (tmp_path / "s.json").exists()
