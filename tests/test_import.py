import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_paths, path_flags, tree_snapshot

from kneeseg.cli.import_kneebones3dify import main as import_main
from kneeseg.dataset.bones import split_bones
from kneeseg.dataset.layout import DatasetJson
from kneeseg.dataset.phantom import PhantomOptions, synthesize_case
from kneeseg.errors import KneesegError
from kneeseg.io import Geometry, read_image, write_image


def test_zenodo_subset_masks_pair_by_instance_number(tmp_path, shared_dir):
    paths = make_paths(tmp_path)
    source = shared_dir / "original_subset"
    before = tree_snapshot(source)
    assert import_main([str(source), "--binary", "-d", "902", "--name", "Subset", *path_flags(paths)]) == 0
    assert tree_snapshot(source) == before  # the user's files are untouched
    out = paths.raw / "Dataset902_Subset"
    sub = sitk.ReadImage(str(out / "labelsTr" / "knee.nii.gz"))
    full = sitk.ReadImage(str(shared_dir / "knee_bone.nii.gz"))
    sub_arr, full_arr = sitk.GetArrayFromImage(sub), sitk.GetArrayFromImage(full)
    assert sub_arr.shape == (12, 512, 512)
    for k in range(12):
        # The same physical slice of the reference NIfTI mask must hold exactly the same voxels.
        index = full.TransformPhysicalPointToIndex(sub.TransformIndexToPhysicalPoint((0, 0, k)))
        assert index[:2] == (0, 0)
        assert sub_arr[k].sum() > 0
        np.testing.assert_array_equal(sub_arr[k] > 0, full_arr[index[2]] > 0)
    assert DatasetJson.load(out / "dataset.json").labels == {"background": 0, "bone": 1}


def test_subset_without_binary_is_an_error_that_says_what_was_found(tmp_path, shared_dir, capsys):
    paths = make_paths(tmp_path)
    code = import_main([str(shared_dir / "original_subset"), *path_flags(paths)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "original_subset: found" in err[0] and "expected 3 bones" in err[0] and "--binary" in err[0]
    assert not paths.raw.exists() or not any(paths.raw.iterdir())


@pytest.mark.slow
def test_full_scan_splits_into_the_three_bones(tmp_path, shared_dir, capsys):
    paths = make_paths(tmp_path)
    code = import_main([str(shared_dir / "knee_0000.nii.gz"), "--mask", str(shared_dir / "knee_bone.nii.gz"), *path_flags(paths)])
    assert code == 0
    out = paths.raw / "Dataset901_KneeBones3Dify"
    labels, geometry = read_image(out / "labelsTr" / "knee.nii.gz")
    counts = np.bincount(labels.ravel(), minlength=4)
    assert counts[1:].tolist() == [3_964_981, 2_275_584, 426_609]
    _, scan_geometry = read_image(shared_dir / "knee_bone.nii.gz")
    assert geometry.matches(scan_geometry) is None
    assert "femur: 3964981 voxels" in capsys.readouterr().out


def _binary_phantom():
    _, labels, geometry = synthesize_case(np.random.default_rng(3), PhantomOptions(shape=(64, 64, 64), spacing=(2.0, 2.0, 2.0)))
    return labels, geometry


def test_bones_are_named_by_anatomy_not_by_array_order():
    labels, geometry = _binary_phantom()
    # The same knee stored upside down and front-to-back: arrays flipped, direction flipped too,
    # so the anatomy in scanner space is unchanged and the labels must follow it.
    flipped = Geometry(geometry.size, geometry.spacing, geometry.origin, (1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0))
    split = split_bones(labels[::-1, ::-1] > 0, flipped)
    np.testing.assert_array_equal(split.labels, labels[::-1, ::-1])
    assert [c.label for c in split.bones] == ["femur", "tibia", "patella"]


def test_small_stray_components_are_reported_not_labelled():
    labels, geometry = _binary_phantom()
    mask = labels > 0
    mask[2:4, 2:4, 2:4] = True  # a speck far from any bone
    split = split_bones(mask, geometry)
    assert len(split.strays) == 1 and split.strays[0].voxels == 8
    assert any("stray component" in line for line in split.report())
    assert split.labels[2:4, 2:4, 2:4].max() == 0


def test_mask_with_two_bones_is_an_error():
    labels, geometry = _binary_phantom()
    with pytest.raises(KneesegError, match="found 2 large connected component"):
        split_bones(np.isin(labels, [1, 2]), geometry)


def test_bad_mask_inputs(tmp_path, capsys):
    labels, geometry = _binary_phantom()
    write_image(labels.astype(np.int16) * 100, geometry, tmp_path / "scan.nii.gz")
    write_image(labels, geometry, tmp_path / "multilabel.nii.gz")
    other = Geometry(geometry.size, (1.0, 1.0, 1.0), geometry.origin, geometry.direction)
    write_image((labels > 0).astype(np.uint8), other, tmp_path / "shifted.nii.gz")
    paths = make_paths(tmp_path / "out")
    assert import_main([str(tmp_path / "scan.nii.gz"), "--mask", str(tmp_path / "multilabel.nii.gz"), *path_flags(paths)]) == 2
    assert "multilabel.nii.gz: expected a binary mask" in capsys.readouterr().err
    assert import_main([str(tmp_path / "scan.nii.gz"), "--mask", str(tmp_path / "shifted.nii.gz"), *path_flags(paths)]) == 2
    assert "shifted.nii.gz: mask geometry does not match" in capsys.readouterr().err
    assert import_main([str(tmp_path / "scan.nii.gz"), *path_flags(paths)]) == 2
    assert "scan.nii.gz: give a Zenodo folder" in capsys.readouterr().err
    assert not paths.raw.exists() or not any(paths.raw.iterdir())


@pytest.mark.slow
def test_half_b_keeps_voxels_in_place_and_the_anatomical_names(tmp_path, shared_dir):
    paths = make_paths(tmp_path)
    flags = [str(shared_dir / "knee_0000.nii.gz"), "--mask", str(shared_dir / "knee_bone.nii.gz"), *path_flags(paths)]
    assert import_main([*flags, "--half", "B", "-d", "903", "--name", "HalfB"]) == 0
    labels, geometry = read_image(paths.raw / "Dataset903_HalfB" / "labelsTr" / "knee.nii.gz")
    image, _ = read_image(paths.raw / "Dataset903_HalfB" / "imagesTr" / "knee_0000.nii.gz")
    full = sitk.ReadImage(str(shared_dir / "knee_0000.nii.gz"))
    assert labels.shape == (286, 512, 256)
    assert set(np.unique(labels)) == {0, 1, 2}  # half B holds femur and tibia only, still named as such
    # Voxel (z, y, 0) of half B is voxel (z, y, 256) of the full scan, at the same physical point.
    point = geometry.index_to_physical(np.array([[0, 10, 20]]))[0]
    assert full.TransformPhysicalPointToIndex(tuple(point)) == (256, 10, 20)
    np.testing.assert_array_equal(image[20, 10], sitk.GetArrayFromImage(full)[20, 10, 256:])
