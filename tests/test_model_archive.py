"""kneeseg_export_model / kneeseg_install_model end to end on the small phantom model: one export,
one install, two predictions, and the archives an install must refuse."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from conftest import MODEL_DIR, tree_snapshot

from kneeseg.cli.export_model import main as export_main
from kneeseg.cli.install_model import main as install_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.io import read_image

SCAN = "Dataset900_KneePhantom/imagesTs/phantom_test_000_0000.nii.gz"
WEIGHTS = "fold_0/checkpoint_final.pth"


@pytest.fixture(scope="module")
def shared(small_model, tmp_path_factory):
    """The small model exported (float16, the default) and installed into a fresh results folder."""
    root = tmp_path_factory.mktemp("archive")
    archive, results = root / "model.zip", root / "results"
    assert export_main([str(small_model.results / MODEL_DIR), "-o", str(archive)]) == 0
    assert install_main([str(archive), "--results", str(results)]) == 0
    return small_model, archive, results


def _entries(folder):
    """Every path under ``folder``, folders included (tree_snapshot holds the files' bytes)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_line_error(code, capsys, expected):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("kneeseg_install_model: error: ") and expected in err[0], err[0]


def test_export_holds_weights_only_in_half_precision(shared):
    paths, archive, _ = shared
    fold = paths.results / MODEL_DIR / "fold_0"
    fold_bytes = sum(p.stat().st_size for p in fold.rglob("*") if p.is_file())
    assert archive.stat().st_size < fold_bytes / 4, (archive.stat().st_size, fold_bytes)
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("kneeseg_model.json"))
        weights = zf.read(WEIGHTS)
        for name in names - {"kneeseg_model.json"}:
            assert hashlib.sha256(zf.read(name)).hexdigest() == manifest["files"][name]
    assert {"plans.json", "dataset.json", "model.json", WEIGHTS} <= names
    assert manifest["folds"] == ["0"] and manifest["dtype"] == "float16"
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    assert set(state) == {"trainer", "plans_name", "configuration", "fold", "signature", "network"}
    floats = [t for t in state["network"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    # The weights are the final checkpoint's, rounded to half precision.
    original = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network"]
    for key, value in state["network"].items():
        torch.testing.assert_close(value.float(), original[key].float(), rtol=1e-3, atol=1e-4)


def test_installed_model_predicts_like_the_original(shared, tmp_path, capsys):
    paths, archive, results = shared
    installed = results / MODEL_DIR
    with zipfile.ZipFile(archive) as zf:
        assert (installed / WEIGHTS).read_bytes() == zf.read(WEIGHTS)
    assert not (installed / "kneeseg_model.json").exists()
    common = ["-i", str(paths.raw / SCAN), "--device", "cpu", "--tta", "none", "--no-progress"]
    assert predict_main([*common, "-o", str(tmp_path / "original.nii.gz"), "-m", str(paths.results / MODEL_DIR)]) == 0
    assert predict_main([*common, "-o", str(tmp_path / "installed.nii.gz"), "--results", str(results)]) == 0
    original, _ = read_image(tmp_path / "original.nii.gz")
    shared_labels, _ = read_image(tmp_path / "installed.nii.gz")
    bones = [v for v in np.unique(original) if v != 0]
    assert bones, "the original model finds no bone"
    # Half-precision weights move a few boundary voxels: under 1 % of the bone overall; a small bone's
    # Dice (the phantom patella has a few hundred voxels) may lose a little more
    either = (original > 0) | (shared_labels > 0)
    assert np.count_nonzero(original[either] != shared_labels[either]) < 0.01 * np.count_nonzero(either)
    for value in bones:
        a, b = original == value, shared_labels == value
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice > 0.97, (value, dice)
    # --overwrite replaces the installed model and leaves no temporary folder beside it.
    capsys.readouterr()
    assert install_main([str(archive), "--results", str(results), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == f"installed {installed}"
    assert sorted(p.name for p in installed.parent.iterdir()) == [installed.name]


def _repacked(archive, target, edit, rehash=True):
    """A copy of ``archive`` with ``edit(members)`` applied; the manifest's sums updated if ``rehash``."""
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    edit(members)
    if rehash:
        manifest = json.loads(members["kneeseg_model.json"])
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "kneeseg_model.json"}
        members["kneeseg_model.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return target


def _other_plans(members):
    plans = json.loads(members["plans.json"])
    config = json.loads(members["model.json"])["configuration"]
    plans["configurations"][config]["spacing"] = [s * 1.1 for s in plans["configurations"][config]["spacing"]]
    members["plans.json"] = json.dumps(plans).encode()


def _truncated_weights(members):
    members[WEIGHTS] = members[WEIGHTS][: len(members[WEIGHTS]) // 2]


def test_install_refuses_bad_archives_and_writes_nothing(shared, tmp_path, capsys):
    _, archive, installed_results = shared
    results = tmp_path / "results"
    (results / "Dataset123_Other").mkdir(parents=True)
    (results / "Dataset123_Other" / "notes.txt").write_text("someone else's")
    before, entries = tree_snapshot(results), _entries(results)
    text = tmp_path / "text.zip"
    text.write_text("not a zip\n")
    random_files = tmp_path / "random.zip"
    with zipfile.ZipFile(random_files, "w") as zf:
        zf.writestr("a.bin", np.random.default_rng(0).bytes(1000))
        zf.writestr("b.txt", "hello")
    truncated_zip = tmp_path / "truncated.zip"
    truncated_zip.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    cases = [
        (text, "not a zip file"),
        (random_files, "not a kneeseg model archive"),
        (truncated_zip, "not a zip file or a damaged one"),
        (_repacked(archive, tmp_path / "other_plans.zip", _other_plans), "a model made with other plans"),
        (_repacked(archive, tmp_path / "edited.zip", _other_plans, rehash=False), "plans.json is damaged or altered"),
        (_repacked(archive, tmp_path / "cut_weights.zip", _truncated_weights), f"{WEIGHTS}: unreadable weights"),
        (_repacked(archive, tmp_path / "escape.zip", lambda m: m.update({"../evil.json": b"{}"})), "outside the model folder"),
    ]
    for bad, expected in cases:
        _one_line_error(install_main([str(bad), "--results", str(results)]), capsys, expected)
        assert tree_snapshot(results) == before and _entries(results) == entries, bad
    # A model already installed there is kept unless --overwrite.
    before, entries = tree_snapshot(installed_results), _entries(installed_results)
    _one_line_error(install_main([str(archive), "--results", str(installed_results)]), capsys, "already installed")
    assert tree_snapshot(installed_results) == before and _entries(installed_results) == entries


def test_export_refuses_to_overwrite(shared, tmp_path, capsys):
    paths, archive, _ = shared
    model = paths.results / MODEL_DIR
    before, archive_bytes = tree_snapshot(model), archive.read_bytes()
    for output, expected in ((model / "model.zip", "would be written into the input"), (archive, "exists; use --overwrite")):
        assert export_main([str(model), "-o", str(output)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kneeseg_export_model: error: ") and expected in err[0], err
    assert tree_snapshot(model) == before and archive.read_bytes() == archive_bytes
