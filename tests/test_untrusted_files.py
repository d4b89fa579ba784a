"""Files from elsewhere are data, never code: a checkpoint whose pickle would run code (here: write a
marker file) is refused by every command that reads one, in one line naming it, with the marker
unwritten and nothing else written; preprocessed arrays are read without pickle; checkpoints of
kneeseg 0.2 (numpy's random state as an ndarray) still load; the API leaves the caller's options as
they were given."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import MODEL_DIR, make_paths, path_flags, tree_snapshot

from kneeseg.api import export_model, train
from kneeseg.cli.export_model import main as export_main
from kneeseg.cli.install_model import main as install_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.cli.train import main as train_main
from kneeseg.errors import KneesegError
from kneeseg.inference.model import load_model
from kneeseg.models import builtin_model_dir
from kneeseg.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from kneeseg.training.data import CaseStore
from kneeseg.training.trainer import TrainOptions

SCAN = "Dataset900_KneePhantom/imagesTs/phantom_test_000_0000.nii.gz"
WEIGHTS = "fold_0/checkpoint_final.pth"


class WritesMarker:
    """Unpickled by an ordinary pickle load, this runs ``exec`` and writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def crafted_checkpoint(marker, signature: str = "") -> bytes:
    """A checkpoint as torch.save writes it, whose network is the code-running object."""
    buffer = io.BytesIO()
    torch.save({"signature": signature, "network": WritesMarker(marker)}, buffer)
    return buffer.getvalue()


def test_the_crafted_checkpoint_runs_code_when_unpickled_as_before(tmp_path):
    """The payload is real: torch.load(weights_only=False), the way checkpoints were read, writes the marker."""
    marker = tmp_path / "marker"
    torch.load(io.BytesIO(crafted_checkpoint(marker)), weights_only=False)
    assert marker.read_text() == "code ran"


def _model_copy(small_model, tmp_path, marker):
    model = tmp_path / "model"
    shutil.copytree(small_model.results / MODEL_DIR, model)
    signature = load_checkpoint(model / WEIGHTS)["signature"]
    (model / WEIGHTS).write_bytes(crafted_checkpoint(marker, signature))
    return model


def _predict(small_model, tmp_path, marker):
    model = _model_copy(small_model, tmp_path, marker)
    out = tmp_path / "out"
    code = predict_main(["-i", str(small_model.raw / SCAN), "-o", str(out / "bones.nii.gz"), "-m", str(model),
                         "--device", "cpu", "--no-progress"])
    return code, str(model / WEIGHTS), out, "kneeseg_predict"


def _continue(small_model, tmp_path, marker):
    paths = make_paths(tmp_path / "work")
    shutil.copytree(small_model.preprocessed, paths.preprocessed)
    model = _model_copy(small_model, tmp_path, marker)
    shutil.copytree(model, paths.results / MODEL_DIR)
    before = tree_snapshot(paths.results)
    code = train_main(["0", "--continue", "--device", "cpu", "--no-progress", *path_flags(paths)])
    assert tree_snapshot(paths.results) == before  # no log, no new checkpoint, no lock left behind
    return code, str(paths.results / MODEL_DIR / WEIGHTS), tmp_path / "nothing", "kneeseg_train"


def _export(small_model, tmp_path, marker):
    model = _model_copy(small_model, tmp_path, marker)
    out = tmp_path / "model.zip"
    return export_main([str(model), "-o", str(out)]), str(model / WEIGHTS), out, "kneeseg_export_model"


def _install(small_model, tmp_path, marker):
    archive = tmp_path / "model.zip"
    export_model(small_model.results / MODEL_DIR, archive)
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[WEIGHTS] = crafted_checkpoint(marker, load_checkpoint(small_model.results / MODEL_DIR / WEIGHTS)["signature"])
    manifest = json.loads(members["kneeseg_model.json"])  # re-signed, as whoever crafted it would
    manifest["files"][WEIGHTS] = hashlib.sha256(members[WEIGHTS]).hexdigest()
    members["kneeseg_model.json"] = json.dumps(manifest).encode()
    crafted = tmp_path / "crafted.zip"
    with zipfile.ZipFile(crafted, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    results = tmp_path / "results"
    return install_main([str(crafted), "--results", str(results)]), f"{crafted}: {WEIGHTS}", results, "kneeseg_install_model"


@pytest.mark.parametrize("reader", [_predict, _continue, _export, _install], ids=["predict", "continue", "export", "install"])
def test_a_checkpoint_that_would_run_code_is_refused_by_every_reader(reader, small_model, tmp_path, capsys):
    marker = tmp_path / "marker"
    capsys.readouterr()
    code, named, output, prog = reader(small_model, tmp_path, marker)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: {named}: "), err[0]
    assert not marker.exists() and not output.exists()


def test_checkpoints_hold_only_what_the_weights_only_reader_builds(small_model):
    """The trainer's checkpoints, the random states included, and the shipped model need no allowance."""
    fold = small_model.results / MODEL_DIR / "fold_0"
    shipped = builtin_model_dir()
    for path in [fold / "checkpoint_final.pth", fold / "checkpoint_best.pth", *([shipped / WEIGHTS] if shipped else [])]:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], path
        assert isinstance(torch.load(path, map_location="cpu", weights_only=True)["network"], dict), path


def _draws():
    return np.random.rand(4).tolist(), float(np.random.randn()), random.random(), torch.rand(3).tolist()


def test_the_saved_random_state_restores_every_generator_exactly(tmp_path):
    np.random.seed(5)
    np.random.randn()  # numpy now holds a cached Gaussian, which the state must carry too
    path = tmp_path / "state.pth"
    save_checkpoint({"network": {}, "rng": rng_state()}, path)
    expected = _draws()
    _draws()
    restore_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected


def test_a_checkpoint_of_kneeseg_0_2_still_predicts_and_continues_its_random_state(small_model, tmp_path):
    """kneeseg 0.2 saved numpy's random state as numpy's own tuple (an ndarray in it); such a file
    still loads, weights-only, for prediction and for --continue."""
    model = tmp_path / "model"
    shutil.copytree(small_model.results / MODEL_DIR, model)
    state = load_checkpoint(model / WEIGHTS)
    state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(state, model / WEIGHTS)  # as kneeseg 0.2 wrote it
    assert torch.serialization.get_unsafe_globals_in_checkpoint(model / WEIGHTS)  # numpy's: the old format indeed
    expected = _draws()
    networks = load_model(model).load_networks()
    loaded = networks[0].state_dict()
    assert len(networks) == 1 and all(torch.equal(loaded[k], v) for k, v in state["network"].items())
    restore_rng_state(load_checkpoint(model / WEIGHTS)["rng"])
    assert _draws() == expected


def test_preprocessed_arrays_are_read_without_pickle(tmp_path):
    """A case array holding pickled objects is refused (np.load's allow_pickle stays off)."""
    marker = tmp_path / "marker"
    (tmp_path / "case.json").write_text(json.dumps({"class_locations": {}}))
    np.save(tmp_path / "case.npy", np.array([WritesMarker(marker)], dtype=object), allow_pickle=True)
    np.save(tmp_path / "case_seg.npy", np.zeros((1, 4, 4, 4), np.uint8))
    with pytest.raises(KneesegError, match="case.npy: preprocessed case cannot be read"):
        CaseStore(tmp_path, ["case"]).load("case")
    assert not marker.exists()


def test_train_leaves_the_callers_options_unchanged(small_model, tmp_path):
    paths = make_paths(tmp_path)
    shutil.copytree(small_model.preprocessed, paths.preprocessed)
    options = TrainOptions(fold="3", epochs=1, iters_per_epoch=2, val_iters=1, device="cpu", num_workers=0, progress=False)
    given = replace(options)
    result = train(paths, "0", options=options, predict_validation=False)
    assert options == given  # the fold trained is the argument's, not written into the caller's options
    assert result.fold_dir.name == "fold_0" and load_checkpoint(result.fold_dir / "checkpoint_final.pth")["fold"] == "0"
