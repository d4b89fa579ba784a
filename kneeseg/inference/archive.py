"""Model archives: a trained model folder as one zip to share, and that zip installed in a results folder.

Why: a fold's checkpoint_final.pth keeps what continuing a training needs (optimizer state, the
last epoch's weights beside their tail average, the history), most of its size. Whoever only
predicts needs the network's weights, and half precision loses nothing a label map shows (the
networks compute in float32: ``float32_weights`` casts them back on loading). An archive holds the
model folder's files (plans.json, dataset.json, model.json, postprocessing.json, MODEL_CARD.md, README.md),
one weights-only ``fold_N/checkpoint_final.pth`` per fold, and a manifest, kneeseg_model.json,
with the sha256 of every file.

Installing trusts nothing in the zip. Every member is hashed, must be a file of a model folder
(no absolute paths, no ``..``), and is parsed as the predictor will parse it (plans, dataset.json,
post-processing; weights read with torch's weights-only unpickler, which runs no code, and loaded
into the plans' U-Net) before anything is written. The folder is then unpacked beside its target
and renamed into place, so a results folder never holds part of a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import torch

from kneeseg import __version__
from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError
from kneeseg.inference.model import CHECKPOINT, float32_weights, load_model, trained_folds
from kneeseg.io import atomic_path, ensure_writable_folder, read_json, refuse_overwriting_inputs, refuse_special_file
from kneeseg.planning.plans import ConfigurationPlan, Plans
from kneeseg.postprocessing.operations import checked_steps
from kneeseg.training.checkpoint import load_checkpoint
from kneeseg.training.layout import model_dir
from kneeseg.training.network import UNet

MANIFEST = "kneeseg_model.json"
FORMAT, FORMAT_VERSION = "kneeseg-model", 1
REQUIRED = ("plans.json", "dataset.json", "model.json")
OPTIONAL = ("postprocessing.json", "MODEL_CARD.md", "README.md")  # README.md: a fine-tuned model's parent
WEIGHTS = re.compile(r"fold_([A-Za-z0-9]+)/" + re.escape(CHECKPOINT))
# What the predictor reads of a checkpoint besides the weights (it checks the signature against the plans).
LOADER_KEYS = ("trainer", "plans_name", "configuration", "fold", "signature")
DATASET_NAME = re.compile(r"Dataset\d{3}_[A-Za-z0-9_-]+")
FOLDER_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # trainer, plans and configuration names
MAX_BYTES = 4 << 30  # unpacked size: far above any model; a zip declaring more is not one
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed date: the same model always exports to the same bytes


# ---- export ----------------------------------------------------------------------------------
def export_model(folder: Path, output: Path, folds: list[str] | None = None, half: bool = True,
                 overwrite: bool = False) -> dict:
    """Write model folder ``folder`` (``folds``, default every fold with a final checkpoint) as the
    archive ``output``, weights in float16 unless ``half`` is False; returns the manifest."""
    folder, output = Path(folder), Path(output)
    refuse_overwriting_inputs([output], [folder])
    if output.is_dir():
        raise KneesegError(f"{output}: is a folder; give the archive's file name (model.zip)")
    if output.exists() and not overwrite:
        raise KneesegError(f"{output}: exists; use --overwrite to replace it")
    model = load_model(folder, folds or trained_folds(folder) or None)
    info = read_json(folder / "model.json")
    members = {name: (folder / name).read_bytes() for name in (*REQUIRED, *OPTIONAL) if (folder / name).is_file()}
    for path in model.checkpoints:
        state = load_checkpoint(path)
        if state.get("signature") != model.config.preprocessing_signature():
            raise KneesegError(f"{path}: trained with other plans than {folder / 'plans.json'}")
        members[f"{path.parent.name}/{CHECKPOINT}"] = _weights_only(state, half, path)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kneeseg_version": __version__,
        "dataset": model.plans.dataset_name, "model": "__".join(str(info[k]) for k in ("trainer", "plans_name", "configuration")),
        "folds": [p.parent.name[len("fold_"):] for p in model.checkpoints], "dtype": "float16" if half else "float32",
        "files": {name: _sha256(data) for name, data in members.items()},
    }
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, data in {MANIFEST: json.dumps(manifest, indent=2).encode(), **members}.items():
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16  # rw-r--r-- when unzipped by hand
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return manifest


def _weights_only(state: dict, half: bool, path: Path) -> bytes:
    """The checkpoint ``state`` without what only training uses, serialised."""
    network = {}
    for key, value in state["network"].items():
        value = value.detach().cpu().clone()
        if half and value.is_floating_point():
            small = value.half()
            if torch.isfinite(value).all() and not torch.isfinite(small).all():
                raise KneesegError(f"{path}: weight {key} exceeds half precision's range; export with --fp32")
            value = small
        network[key] = value
    buffer = io.BytesIO()
    torch.save({**{k: state.get(k) for k in LOADER_KEYS}, "network": network}, buffer)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- install ---------------------------------------------------------------------------------
def install_model(archive: Path, results: Path, overwrite: bool = False) -> Path:
    """Verify ``archive`` whole, then unpack it as ``results/DatasetNNN_Name/TRAINER__PLANS__CONFIG``
    (replacing a model installed there only if ``overwrite``); returns that folder."""
    archive = Path(archive)
    members = _verified_members(archive)
    target = _target(archive, members, Path(results))
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise KneesegError(f"{target}: a model is already installed there; use --overwrite to replace it")
    _check_model(archive, members)
    _unpack(members, target)
    return target


def _verified_members(archive: Path) -> dict[str, bytes]:
    """The archive's files by name, each matching the manifest's sha256; the manifest left out."""
    refuse_special_file(archive)
    if not archive.is_file():
        raise KneesegError(f"{archive}: {'is a folder' if archive.is_dir() else 'file not found'}")
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            names = [i.filename for i in infos]
            escaping = next((n for n in names if _escapes(n)), None)
            if escaping is not None:
                raise KneesegError(f"{archive}: member {escaping} points outside the model folder")
            if len(set(names)) != len(names):
                raise KneesegError(f"{archive}: a member appears twice")
            if MANIFEST not in names:
                raise KneesegError(f"{archive}: not a kneeseg model archive (no {MANIFEST})")
            if sum(i.file_size for i in infos) > MAX_BYTES:
                raise KneesegError(f"{archive}: unpacks to more than {MAX_BYTES >> 30} GB; not a model archive")
            members = {i.filename: zf.read(i) for i in infos}
    except zipfile.BadZipFile as exc:
        raise KneesegError(f"{archive}: not a zip file or a damaged one ({exc})") from None
    except (EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:  # truncated, unknown compression, encrypted
        raise KneesegError(f"{archive}: damaged zip ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise KneesegError(f"{archive}: cannot read ({exc.strerror or exc})") from None
    manifest = _json(archive, members.pop(MANIFEST), MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise KneesegError(f"{archive}: not a kneeseg model archive ({MANIFEST} is not its manifest)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise KneesegError(f"{archive}: archive format {manifest.get('format_version')} (made by kneeseg "
                           f"{manifest.get('kneeseg_version')}); this kneeseg {__version__} reads format {FORMAT_VERSION}")
    listed: dict = manifest["files"]
    for name in sorted(set(members) | set(listed)):
        if name not in listed:
            raise KneesegError(f"{archive}: {name} is not listed in {MANIFEST}")
        if name not in members:
            raise KneesegError(f"{archive}: {name} is listed in {MANIFEST} but missing")
        if _sha256(members[name]) != listed[name]:
            raise KneesegError(f"{archive}: {name} is damaged or altered (sha256 differs from {MANIFEST})")
        if name not in REQUIRED + OPTIONAL and not WEIGHTS.fullmatch(name):
            raise KneesegError(f"{archive}: {name} is not a file of a model folder")
    missing = [n for n in REQUIRED if n not in members]
    if missing or not any(WEIGHTS.fullmatch(n) for n in members):
        raise KneesegError(f"{archive}: not a complete model (no {missing[0] if missing else 'fold_*/' + CHECKPOINT})")
    return members


def _escapes(name: str) -> bool:
    """Whether a member name could land outside the folder it is unpacked into."""
    return (name.startswith(("/", "\\")) or "\\" in name or re.match(r"[A-Za-z]:", name) is not None
            or ".." in PurePosixPath(name).parts)


def _json(archive: Path, data: bytes, name: str):
    try:
        return json.loads(data)
    except ValueError as exc:  # also a file that is not UTF-8
        raise KneesegError(f"{archive}: {name} is not valid JSON ({exc})") from None


def _target(archive: Path, members: dict[str, bytes], results: Path) -> Path:
    """Where the model goes, from plans.json's dataset name and model.json's trainer, plans and configuration."""
    plans = _plans(archive, members)
    info = _json(archive, members["model.json"], "model.json")
    parts = [info.get(k) if isinstance(info, dict) else None for k in ("trainer", "plans_name", "configuration")]
    if not all(isinstance(p, str) and FOLDER_PART.fullmatch(p) for p in parts):
        raise KneesegError(f"{archive}: model.json must name the trainer, plans_name and configuration (letters, digits, _ . -)")
    if not isinstance(plans.dataset_name, str) or not DATASET_NAME.fullmatch(plans.dataset_name):
        raise KneesegError(f"{archive}: plans.json: dataset name '{plans.dataset_name}' is not DatasetNNN_Name")
    trainer, plans_name, configuration = (str(p) for p in parts)
    return model_dir(results, plans.dataset_name, plans_name, configuration, trainer)


def _plans(archive: Path, members: dict[str, bytes]) -> Plans:
    return Plans.from_data(_json(archive, members["plans.json"], "plans.json"), f"{archive}: plans.json")


def _check_model(archive: Path, members: dict[str, bytes]) -> None:
    """Everything the predictor will read, read as it will read it: a model that installs, loads."""
    plans = _plans(archive, members)
    ds = DatasetJson.from_data(_json(archive, members["dataset.json"], "dataset.json"), f"{archive}: dataset.json")
    try:
        config = plans.configuration(_json(archive, members["model.json"], "model.json")["configuration"])
    except KneesegError as exc:
        raise KneesegError(f"{archive}: {exc}") from None
    if "postprocessing.json" in members:
        checked_steps(_json(archive, members["postprocessing.json"], "postprocessing.json"),
                      f"{archive}: postprocessing.json", set(ds.foreground_labels))
    for name in sorted(n for n in members if WEIGHTS.fullmatch(n)):
        _check_weights(f"{archive}: {name}", members[name], config, ds)


def _check_weights(where: str, data: bytes, config: ConfigurationPlan, ds: DatasetJson) -> None:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise KneesegError(f"{where}: unreadable weights ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("network"), dict):
        raise KneesegError(f"{where}: not a kneeseg checkpoint")
    if state.get("signature") != config.preprocessing_signature():
        raise KneesegError(f"{where}: a model made with other plans (its preprocessing signature is not that of "
                           f"plans.json's {config.name})")
    try:
        UNet(config.network, ds.num_channels, len(ds.labels)).load_state_dict(float32_weights(state["network"]))
    except (RuntimeError, TypeError, AttributeError, ValueError):
        raise KneesegError(f"{where}: does not fit the network of plans.json and dataset.json "
                           f"({ds.num_channels} channel(s), {len(ds.labels)} labels)") from None


def _unpack(members: dict[str, bytes], target: Path) -> None:
    """Write the folder under a temporary name beside ``target``, then rename it into place.

    The temporary names hold no ``__``, so that model discovery (``*__*__*``) never mistakes a
    folder left by an interrupted install for a model."""
    ensure_writable_folder(target.parent)
    tmp, old = (target.parent / f".installing.{os.getpid()}", target.parent / f".replaced.{os.getpid()}")
    try:
        for name, data in members.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if target.exists() or target.is_symlink():
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)
                raise
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise KneesegError(f"{target}: cannot install there ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists() or old.is_symlink():
            old.unlink()
