import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg.errors import KneesegError
from kneeseg.io import Geometry, file_ending, read_image, strip_ending, write_image
from kneeseg.io.orientation import Orientation

GEOM = Geometry(size=(5, 4, 3), spacing=(0.5, 0.7, 2.0), origin=(10.0, -20.0, 3.5),
                direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_keeps_array_and_geometry(tmp_path, ending):
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / f"img{ending}"
    write_image(array, GEOM, path)
    back, geometry = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert geometry.matches(GEOM) is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_geometry_mismatch_is_described():
    other = Geometry(GEOM.size, (0.5, 0.7, 2.5), GEOM.origin, GEOM.direction)
    assert "spacing" in GEOM.matches(other)


def test_endings():
    assert file_ending("a/knee_0000.nii.gz") == ".nii.gz"
    assert strip_ending("knee_0000.nii.gz") == "knee_0000"
    assert strip_ending("scan.nrrd") == "scan"


def test_unsupported_output_ending_is_refused(tmp_path):
    with pytest.raises(KneesegError, match="unsupported output ending"):
        write_image(np.zeros((3, 4, 5)), GEOM, tmp_path / "x.png")
    assert not any(tmp_path.iterdir())


def test_unreadable_and_wrong_dimension_inputs(tmp_path):
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(KneesegError, match="broken.nii.gz: cannot read image"):
        read_image(garbage)
    with pytest.raises(KneesegError, match="missing.nii.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(flat))
    with pytest.raises(KneesegError, match="flat.nii.gz: is 2D"):
        read_image(flat)
    vec = tmp_path / "vector.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True), str(vec))
    with pytest.raises(KneesegError, match="vector.nii.gz: has 2 components"):
        read_image(vec)


def test_dicom_series_folder_is_read_in_position_order(shared_dir):
    image, geometry = read_image(shared_dir / "original_subset" / "Data")
    assert image.shape == (12, 512, 512)
    # Slice positions increase along the volume's z axis (the reader sorts by position).
    z0 = geometry.index_to_physical(np.array([[0, 0, 0]]))[0, 2]
    z1 = geometry.index_to_physical(np.array([[0, 0, 11]]))[0, 2]
    assert z1 > z0


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nonfinite_voxels_are_found_in_nifti_although_itk_zeroes_them(tmp_path, ending):
    from kneeseg.io.nifti import nifti_nonfinite_count

    array = np.ones((3, 4, 5), np.float32)
    array[1, 2, 3], array[0, 0, 0] = np.nan, -np.inf
    write_image(array, GEOM, tmp_path / f"f{ending}")
    assert nifti_nonfinite_count(tmp_path / f"f{ending}") == 2
    write_image(np.ones((3, 4, 5), np.float64), GEOM, tmp_path / f"ok{ending}")
    assert nifti_nonfinite_count(tmp_path / f"ok{ending}") == 0
    write_image(np.ones((3, 4, 5), np.int16), GEOM, tmp_path / f"int{ending}")
    assert nifti_nonfinite_count(tmp_path / f"int{ending}") == 0


def canonical_geometry(geometry: Geometry) -> Geometry:
    """The geometry of the canonical array: same voxels in space, axes permuted and flipped."""
    o = Orientation.of(geometry.direction)
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    size_zyx = geometry.shape_zyx
    corner = np.zeros(3)  # input index (x, y, z) of the canonical first voxel
    cols = []
    for a in range(3):
        j = 2 - o.perm[a]  # input index axis behind canonical array axis a
        sign = -1.0 if o.flips[a] else 1.0
        if o.flips[a]:
            corner[j] = size_zyx[o.perm[a]] - 1
        cols.append((2 - a, sign * d[:, j], geometry.spacing[j]))
    cols.sort(key=lambda c: c[0])  # index axes x, y, z of the canonical array
    direction = np.stack([c[1] for c in cols], axis=1)
    origin = geometry.index_to_physical(corner[None])[0]
    return Geometry(tuple(o.shape(size_zyx)[::-1]), tuple(float(c[2]) for c in cols),
                    tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))


@pytest.mark.parametrize("order,flip", [((2, 0, 1), (False, True, False)), ((1, 2, 0), (True, False, True)),
                                        ((0, 1, 2), (False, False, True))])
def test_canonical_orientation_undoes_permuted_and_flipped_storage(order, flip):
    from kneeseg.io.orientation import Orientation

    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    axial = Geometry((7, 6, 5), (0.5, 0.7, 2.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    stored = sitk.Flip(sitk.PermuteAxes(axial.apply_to(sitk.GetImageFromArray(array)), order), flip)
    geometry, layout = Geometry.of(stored), sitk.GetArrayFromImage(stored)
    o = Orientation.of(geometry.direction)
    np.testing.assert_array_equal(o.to_canonical(layout), array)
    np.testing.assert_array_equal(o.from_canonical(o.to_canonical(layout)), layout)
    assert canonical_geometry(geometry).matches(axial) is None
    assert o.spacing(geometry.spacing_zyx) == list(axial.spacing_zyx)


@pytest.mark.parametrize("degrees", [10.0, 30.0, 44.0])
def test_oblique_directions_pair_each_axis_with_its_closest_physical_axis(degrees):
    """A scan tilted by less than 45 degrees keeps the axis pairing (and signs) of its untilted
    version, for every stored axis order and flip."""
    from itertools import permutations, product

    from kneeseg.io.orientation import Orientation

    a = np.radians(degrees)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])  # about the x axis
    for order, signs in product(permutations(range(3)), product((1, -1), repeat=3)):
        straight = np.zeros((3, 3))
        straight[list(order), range(3)] = signs  # index axis i runs along physical axis order[i]
        expected = Orientation.of(straight.ravel())
        assert Orientation.of((tilt @ straight).ravel()) == expected
        assert sorted(expected.perm) == [0, 1, 2]
