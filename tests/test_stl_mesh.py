"""Printable meshes: every STL that kneeseg writes is checked with an independent library (trimesh),
loaded back from the file as any STL reader would (vertices merged by position), and lies where its
voxels are in scanner (LPS) space; what cannot be made printable is named on stderr."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import trimesh
from conftest import centroid, path_flags, physical_to_index

from kneeseg.cli.export_stl import main as stl_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.export import stl as stl_module
from kneeseg.io import Geometry, read_image, write_image

DS = "Dataset900_KneePhantom"
BONES = {"femur": 1, "tibia": 2, "patella": 3}


def noisy_labels() -> np.ndarray:
    """A prediction as noisy as a real one: bones with voxels and blocks touching them (and each other)
    only by an edge or a corner, one-voxel holes, an enclosed cavity, and stray pieces."""
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[:40, :44, :48]
    labels = np.zeros((40, 44, 48), np.uint8)
    femur = ((z - 12) / 9) ** 2 + ((y - 22) / 12) ** 2 + ((x - 24) / 14) ** 2 < 1
    tibia = ((z - 30) / 6) ** 2 + ((y - 22) / 10) ** 2 + ((x - 24) / 12) ** 2 < 1
    patella = ((z - 14) / 4) ** 2 + ((y - 5) / 2.5) ** 2 + ((x - 24) / 4) ** 2 < 1
    labels[femur], labels[tibia], labels[patella] = 1, 2, 3
    # Surface noise: voxels added and removed next to each bone's boundary (diagonal contacts galore).
    for value, mask in ((1, femur), (2, tibia), (3, patella)):
        from scipy import ndimage

        shell = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
        flip = shell & (rng.random(mask.shape) < 0.15)
        labels[flip & (labels == value)] = 0
        labels[flip & (labels == 0)] = value
    # Edge-only and corner-only contacts, by hand.
    labels[2:4, 2:4, 2:4] = 1          # a block near the femur's corner of the box...
    labels[4:6, 4:6, 2:4] = 1          # ...touching another only along an edge (z=4, y=4)
    labels[6:8, 6:8, 4:6] = 1          # ...and a third only at a corner
    labels[12, 22, 24] = 0             # a one-voxel cavity inside the femur
    labels[11, 21, 23] = 0             # and another touching it only at a corner
    labels[36:38, 40:42, 2:4] = 2      # a stray piece of tibia far away
    labels[38, 42, 4] = 2              # and a single voxel on its corner
    return labels


def geometry_for(shape, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1)) -> Geometry:
    return Geometry(shape[::-1], (0.8, 0.7, 2.5), (-40.0, 25.0, 110.0), tuple(float(v) for v in direction))


def load_checked(path, faces_at_most=None, shells=1):
    """The STL as trimesh reads it, after the independent checks."""
    mesh = trimesh.load(str(path), file_type="stl", process=True)
    shared = np.bincount(mesh.edges_unique_inverse)
    assert (shared == 2).all(), (path, int((shared != 2).sum()), "edges not shared by exactly two triangles")
    assert mesh.is_watertight and mesh.is_winding_consistent, path
    assert mesh.body_count == shells, (path, mesh.body_count)
    assert all(body.volume > 0 for body in mesh.split(only_watertight=False)), path
    if faces_at_most is not None:
        assert len(mesh.faces) <= faces_at_most, (path, len(mesh.faces))
    return mesh


def assert_near_its_voxels(mesh, mask, geometry, within: float = 0.75):
    """Every vertex lies within ``within`` voxels (measured in voxel units, so a thin axis counts as
    much as a thick one) of the surface of the voxels written: of the centres of the voxel faces
    between the bone and the rest, the image's border included, since the world beyond the image is
    not bone and the mesh is closed there. Marching cubes puts the surface through those centres;
    smoothing moves it less than a voxel."""
    from scipy.spatial import cKDTree

    solid = np.pad(stl_module.printable_mask(mask)[0], 1)
    faces_zyx = []
    for axis in range(3):
        between = np.argwhere(np.diff(solid.astype(np.int8), axis=axis) != 0).astype(float)
        between[:, axis] += 0.5  # half-way between the two voxels
        faces_zyx.append(between - 1)  # back to the unpadded image's indices
    distance = cKDTree(np.concatenate(faces_zyx)).query(physical_to_index(mesh.vertices, geometry)[:, ::-1])[0]
    assert distance.max() <= within, (distance.max(), mesh.vertices[distance.argmax()])


def assert_on_its_voxels(mesh, mask, geometry):
    """The mesh's centre of mass is on the centroid of the voxels written, within a quarter voxel along
    every voxel axis (the centre taken from scanner LPS mm back to voxels)."""
    solid = stl_module.printable_mask(mask)[0]
    off_xyz = physical_to_index(mesh.center_mass, geometry) - centroid(solid)[::-1]
    assert np.abs(off_xyz).max() < 0.25, (mesh.center_mass, off_xyz)


@pytest.mark.parametrize("direction", [(0, 1, 0, -1, 0, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, 1)],
                         ids=["rotated-det+1", "mirrored-det-1"])
def test_noisy_label_map_gives_printable_meshes_on_their_voxels(tmp_path, capfd, direction):
    labels = noisy_labels()
    geometry = geometry_for(labels.shape, direction)
    seg = tmp_path / "seg.nii.gz"
    write_image(labels, geometry, seg)
    # The noise is real: the label map has edge-/corner-only contacts and several pieces per bone.
    assert not np.array_equal(stl_module.well_composed(labels == 1), labels == 1)
    assert stl_main([str(seg), "-o", str(tmp_path / "stl")]) == 0
    out, err = capfd.readouterr()
    for name, value in BONES.items():
        mesh = load_checked(tmp_path / "stl" / f"{name}.stl")
        assert b"SPACE=LPS" in (tmp_path / "stl" / f"{name}.stl").read_bytes()[:80]  # 3D Slicer's convention, said
        assert_on_its_voxels(mesh, labels == value, geometry)
        assert_near_its_voxels(mesh, labels == value, geometry)
        solid = stl_module.printable_mask(labels == value)[0]
        voxels, written = (float(m.sum() * np.prod(geometry.spacing)) for m in (labels == value, solid))
        assert abs(mesh.volume / written - 1) < 0.08, (name, mesh.volume, written)  # the mesh follows its voxels
        assert 1 <= written / voxels < 1.12, (name, written, voxels)  # and the repair adds little
    assert out.count("checked printable") == 3 and "NOT PRINTABLE" not in out + err
    # The stray pieces (hand-made blocks by the femur, the tibia's far piece) are left out and said so,
    # one line naming the bone.
    for name in ("femur", "tibia"):
        lines = [line for line in err.splitlines() if f"{name}.stl: {name}:" in line]
        assert len(lines) == 1 and "stray piece" in lines[0] and "left out" in lines[0], lines


def test_a_bone_of_a_few_voxels_is_written_with_a_warning_on_its_volume(tmp_path, capfd):
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[3:8, 3:8, 3:8] = 1  # a femur the mesh follows
    labels[9, 9, 9] = 3  # a one-voxel "patella": smoothing shrinks it to a speck
    write_image(labels, geometry_for(labels.shape), tmp_path / "seg.nii.gz")
    assert stl_main([str(tmp_path / "seg.nii.gz"), "-o", str(tmp_path / "stl")]) == 0
    warned = [line for line in capfd.readouterr().err.splitlines() if "not meshed faithfully" in line]
    assert len(warned) == 1 and "patella.stl: patella: mesh volume" in warned[0], warned
    load_checked(tmp_path / "stl" / "patella.stl")


def test_a_one_label_model_keeps_its_bones_as_separate_shells(tmp_path, capfd):
    """A model with one "bone" label (kneeseg_import_kneebones3dify --binary): the bones are pieces of
    one label, all written (not only the largest), each a closed shell, together on their voxels."""
    from scipy import ndimage

    labels = (noisy_labels() > 0).astype(np.uint8)
    geometry = geometry_for(labels.shape)
    write_image(labels, geometry, tmp_path / "seg.nii.gz")
    assert stl_main([str(tmp_path / "seg.nii.gz"), "-o", str(tmp_path / "stl")]) == 0
    err = capfd.readouterr().err
    pieces = ndimage.label(stl_module.printable_mask(labels == 1)[0])[1]
    assert pieces >= 2, pieces
    mesh = load_checked(tmp_path / "stl" / "femur.stl", shells=pieces)  # label 1 takes the first name
    assert_on_its_voxels(mesh, labels == 1, geometry)
    assert f"{pieces} separate pieces, written as {pieces} closed shells" in err


def test_decimation_keeps_the_face_budget_and_the_checks(tmp_path, capfd):
    labels = noisy_labels()
    geometry = geometry_for(labels.shape)
    seg = tmp_path / "seg.nii.gz"
    write_image(labels, geometry, seg)
    assert stl_main([str(seg), "-o", str(tmp_path / "full")]) == 0
    assert stl_main([str(seg), "-o", str(tmp_path / "small"), "--stl-faces", "300"]) == 0
    out, err = capfd.readouterr()
    assert "decimated to" not in err  # the budget was reached for every bone
    for name, value in BONES.items():
        full = load_checked(tmp_path / "full" / f"{name}.stl")
        small = load_checked(tmp_path / "small" / f"{name}.stl", faces_at_most=300)
        assert len(full.faces) > 300
        assert abs(small.volume / full.volume - 1) < 0.1, (name, small.volume, full.volume)
        assert_on_its_voxels(small, labels == value, geometry)
        assert_near_its_voxels(small, labels == value, geometry, within=1.25)
    assert stl_main([str(seg), "-o", str(tmp_path / "x"), "--stl-faces", "2"]) == 2
    assert "--stl-faces 2: a closed mesh needs at least 4 triangles" in capfd.readouterr().err


def test_a_mesh_that_stays_broken_is_named_on_stderr_and_in_the_report(tmp_path, capfd, monkeypatch):
    open_box = trimesh.creation.box()
    open_box.update_faces(np.arange(len(open_box.faces)) > 0)  # one triangle missing
    assert stl_module.mesh_problems(open_box)[0] == "3 edges not shared by exactly two triangles"
    labels = noisy_labels()
    write_image(labels, geometry_for(labels.shape), tmp_path / "seg.nii.gz")
    monkeypatch.setattr(stl_module, "check_mesh", lambda *a: ["7 edges not shared by exactly two triangles"])
    assert stl_main([str(tmp_path / "seg.nii.gz"), "-o", str(tmp_path / "stl")]) == 0
    out, err = capfd.readouterr()
    warned = [line for line in err.splitlines() if "NOT PRINTABLE" in line]
    assert len(warned) == 3 and all(line.startswith("kneeseg: warning: ") for line in warned)
    for name in BONES:
        assert any(f"{name}.stl: {name}: NOT PRINTABLE as written: 7 edges not shared by exactly two triangles" in line
                   for line in warned), name
        assert "NOT PRINTABLE: 7 edges" in next(line for line in out.splitlines() if line.startswith(name))


def test_predict_writes_checked_meshes_per_case_where_the_bones_are(small_model, tmp_path, capfd):
    """kneeseg_predict --stl on a folder: DIR/<case>/<bone>.stl, through the same export as
    kneeseg_export_stl; each mesh printable (or named on stderr) and on its voxels in scanner space;
    --statistics gives each mesh's surface area, as trimesh measures the file. A rerun with the same
    options redoes nothing; with another face budget, every case."""
    from scipy import ndimage

    paths = small_model
    out, stl = tmp_path / "pred", tmp_path / "stl"
    args = ["-i", str(paths.raw / DS / "imagesTs"), "-o", str(out), "--device", "cpu", "--tta", "none", "--no-progress",
            "--stl", str(stl), "--stl-faces"]
    assert predict_main([*args, "3000", "--statistics", *path_flags(paths)]) == 0
    printed, err = capfd.readouterr()
    table = {(row["case"], row["bone"]): row for row in csv.DictReader(open(out / "statistics.csv", encoding="utf-8"))}
    written = 0
    for case in ("phantom_test_000", "phantom_test_001"):
        labels, geometry = read_image(out / f"{case}.nii.gz")
        stats = json.loads((out / f"{case}.statistics.json").read_text(encoding="utf-8"))
        areas = {b["bone"]: b["surface_area_mm2"] for b in stats["bones"]}
        for name, value in BONES.items():
            path = stl / case / f"{name}.stl"
            assert path.exists() == bool((labels == value).any()), path
            if not path.exists():
                assert areas[name] is None and table[(case, name)]["surface_area_mm2"] == ""
                continue
            area = trimesh.load(str(path), file_type="stl").area
            assert areas[name] == pytest.approx(area, rel=1e-3)
            assert float(table[(case, name)]["surface_area_mm2"]) == pytest.approx(area, rel=1e-3)
            assert f"wrote {path}" in printed
            if f"{path}: {name}: NOT PRINTABLE" in err:
                continue
            budget_missed = f"{path}: {name}: decimated to" in err  # said so: fewer faces would break it
            shells = ndimage.label(stl_module.printable_mask(labels == value)[0])[1]  # pieces >= 1% of the largest
            mesh = load_checked(path, faces_at_most=None if budget_missed else 3000, shells=shells)
            # Decimation keeps each vertex within a voxel of a vertex of the undecimated mesh (seen: < 0.7)
            assert_near_its_voxels(mesh, labels == value, geometry, within=1.25)
            written += 1
    assert written >= 4, err
    # Run again with the same options: nothing is redone; with another face budget, every case is.
    assert predict_main([*args, "3000", "--statistics", *path_flags(paths)]) == 0
    assert "2 of 2 case(s) already made" in capfd.readouterr().err
    assert predict_main([*args, "2000", "--statistics", *path_flags(paths)]) == 0
    err = capfd.readouterr().err
    assert "already made" not in err
    for path in stl.rglob("*.stl"):
        assert len(trimesh.load(str(path), file_type="stl").faces) <= 2000 or f"{path}: {path.stem}: decimated to" in err


def test_a_study_case_gets_its_folder_even_without_bones_and_keeps_no_stale_mesh(tmp_path):
    """The --stl hook of a folder run: a case whose prediction holds no bone still gets its (empty)
    folder, so a resumed run finds it done; a bone gone from a case's new prediction loses the mesh
    an earlier run wrote for it."""
    from types import SimpleNamespace

    labels = noisy_labels()
    geometry = geometry_for(labels.shape)
    meshes = stl_module.StudyMeshes(tmp_path / "stl", BONES, per_case=True)
    case = SimpleNamespace(case_id="knee7", channels=(tmp_path / "knee7.nii.gz",))
    warnings: list[str] = []
    meshes(case, labels, labels, geometry, warnings)
    assert sorted(p.name for p in (tmp_path / "stl" / "knee7").iterdir()) == ["femur.stl", "patella.stl", "tibia.stl"]
    assert any("stray piece" in w for w in warnings) and set(meshes.areas["knee7"]) == set(BONES)
    meshes(case, labels, np.where(labels == 3, 0, labels), geometry, [])
    assert sorted(p.name for p in (tmp_path / "stl" / "knee7").iterdir()) == ["femur.stl", "tibia.stl"]
    empty = SimpleNamespace(case_id="brain", channels=(tmp_path / "brain.nii.gz",))
    meshes(empty, labels, np.zeros_like(labels), geometry, [])
    assert (tmp_path / "stl" / "brain").is_dir() and not any((tmp_path / "stl" / "brain").iterdir())
