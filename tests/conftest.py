"""Shared fixtures: small phantom datasets made on the fly, and the real scan from ../shared."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import kneeseg.models
from kneeseg.dataset.phantom import PhantomOptions, synthesize_dataset
from kneeseg.paths import KneesegPaths

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # scan_variants: versions of a scan for the robustness tests
SHARED = Path(os.environ.get("KNEESEG_SHARED", REPO.parent / "shared" / "data" / "KneeBones3Dify"))

# Small phantoms keep the suite fast: 48^3 voxels of 2.5 mm is a whole knee at low resolution.
SMALL = PhantomOptions(shape=(48, 48, 48), spacing=(2.5, 2.5, 2.5))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "knee_0000.nii.gz").exists():
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED


def make_paths(root: Path) -> KneesegPaths:
    return KneesegPaths(root / "raw", root / "preprocessed", root / "results")


def make_phantom(root: Path, n: int = 3, seed: int = 0, options: PhantomOptions = SMALL, name="Dataset900_KneePhantom", num_test=0):
    paths = make_paths(root)
    synthesize_dataset(paths.raw / name, n, seed, options, num_test, progress=False)
    return paths


@pytest.fixture
def phantom_paths(tmp_path) -> KneesegPaths:
    """A fresh 3-case small phantom dataset in a temporary raw folder."""
    return make_phantom(tmp_path)


def path_flags(paths: KneesegPaths) -> list[str]:
    return ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove that nothing was modified."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(0)


def physical_to_index(points: np.ndarray, geometry) -> np.ndarray:
    """Scanner LPS mm -> continuous voxel index (x, y, z): the inverse of Geometry.index_to_physical,
    written out here so that tests do not check the code with itself."""
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    return ((np.asarray(points, float) - geometry.origin) @ d) / geometry.spacing


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A small phantom dataset (4 training + 2 test cases), preprocessed and trained on fold 0 for
    10 x 10 iterations (about a minute): shared by the training and prediction tests."""
    from kneeseg.cli.plan_and_preprocess import main as pp_main
    from kneeseg.cli.train import main as train_main

    paths = make_phantom(tmp_path_factory.mktemp("model"), n=4, num_test=2)
    assert pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(paths)]) == 0
    assert train_main(["0", "--device", "cpu", "--epochs", "10", "--iters-per-epoch", "10", "--val-iters", "2",
                       "--no-progress", *path_flags(paths)]) == 0
    return paths


MODEL_DIR = "Dataset900_KneePhantom/kneesegTrainer__kneesegPlans__3d_cpu"


@pytest.fixture
def phantom_builtin(small_model, tmp_path, monkeypatch):
    """The small phantom model standing in for the built-in one."""
    folder = tmp_path / "builtin_model"
    shutil.copytree(small_model.results / MODEL_DIR, folder)
    monkeypatch.setattr(kneeseg.models, "BUILTIN_MODEL_DIR", folder)
    return folder


def write_dicom_series(scan, folder):
    """A phantom scan as an MR DICOM series (one file per slice) that ITK and pydicom both read; the
    file names run against the slice order, so that only the slice positions give the order."""
    folder.mkdir(parents=True)
    image = sitk.Cast(sitk.ReadImage(str(scan)) * 100, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # the UIDs below, not new ones per file (that would be one series per slice)
    uid = "1.2.826.0.1.3680043.2.1125.77"
    d = image.GetDirection()  # row-major: the columns are the axes; the first two give the slices' orientation
    for z in range(image.GetDepth()):
        piece = image[:, :, z]
        for key, value in (("0020|0013", str(z + 1)), ("0020|000d", uid), ("0020|000e", uid + ".1"), ("0020|0052", uid + ".2"),
                           ("0008|0018", f"{uid}.1.{z + 1}"), ("0008|0060", "MR"),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z))))),
                           ("0020|0037", "\\".join(f"{v:g}" for v in (*d[0::3], *d[1::3]))), ("0018|0050", str(image.GetSpacing()[2]))):
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{image.GetDepth() - 1 - z:03d}.dcm"))
        writer.Execute(piece)


def free_port() -> int:
    """A free local port, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
