"""The model that ships with kneeseg, for a fresh install that has trained nothing.

``kneebones3dify/`` (package data) is an installed model folder like any other (plans.json,
dataset.json, model.json, postprocessing.json, MODEL_CARD.md, ``fold_0/checkpoint_final.pth``
with half-precision weights only): femur, tibia and patella, trained on the whole KneeBones3Dify scan
(Soscia et al., Zenodo 10534328, CC BY 4.0; 0.3 T Esaote O-scan, 3D SST2) by ``make model``.
kneeseg_predict uses it when the results folder holds no trained model and no -m is given, and
with ``-m builtin``. An install without it (a source tree where ``make model`` has not run) says so.

``kneebones3dify_any_contrast/`` is its second reader, built by ``make model-any-contrast`` with
``kneesegTrainerProtocols`` (the scan shown under random contrasts and fields of view): where the
built-in model cannot read a scan (unsure of it as recorded and inverted, kneeseg.inference.qc),
kneeseg_predict reads it with this one instead. The recipe reads contrasts the built-in recipe
cannot and the recorded one less well (half B, models of half A, seed 1: a non-monotonic contrast
0.888 against 0.061, as recorded 0.961 against 0.979), so it reads only what the built-in model
cannot (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.errors import KneesegError

BUILTIN = "builtin"  # the name -m takes for it
BUILTIN_ANY_CONTRAST = "builtin-any-contrast"  # and for its second reader (-m, --second-reader, --pretrained, --plans-from)
BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "kneebones3dify"
ANY_CONTRAST_MODEL_DIR = BUILTIN_MODEL_DIR.with_name(f"{BUILTIN_MODEL_DIR.name}_any_contrast")
MAKE_MODEL_HINT = "this install has no built-in model (make model trains it; see docs/builtin_model.md)"


def builtin_model_dir() -> Path | None:
    """The built-in model's folder, or None where this install has none."""
    return BUILTIN_MODEL_DIR if (BUILTIN_MODEL_DIR / "model.json").exists() else None


def any_contrast_model_dir() -> Path | None:
    """The built-in model's any-contrast second reader's folder, or None where this install has none."""
    # From BUILTIN_MODEL_DIR when asked, not ANY_CONTRAST_MODEL_DIR: a stand-in built-in model has its own beside it
    folder = BUILTIN_MODEL_DIR.with_name(f"{BUILTIN_MODEL_DIR.name}_any_contrast")
    return folder if (folder / "model.json").exists() else None


def second_reader_dir(model: Path) -> Path | None:
    """The second reader of the model folder ``model``: for the built-in model, the any-contrast model
    beside it (``<built-in folder>_any_contrast``) where this install has it; else None."""
    return any_contrast_model_dir() if model.resolve() == BUILTIN_MODEL_DIR.resolve() else None


def model_folder(given: str | Path, flag: str) -> Path:
    """The model folder ``given`` names: ``builtin``, the built-in model's; ``builtin-any-contrast``, its
    any-contrast second reader's (either refused in one line naming ``flag`` where this install has
    none); anything else, that folder (checked by whoever loads it)."""
    shipped = {BUILTIN: (builtin_model_dir, MAKE_MODEL_HINT),
               BUILTIN_ANY_CONTRAST: (any_contrast_model_dir, "this install has no any-contrast model "
                                      "(make model-any-contrast trains it; see docs/builtin_model.md)")}
    if str(given) not in shipped:
        return Path(given)
    find, hint = shipped[str(given)]
    folder = find()
    if folder is None:
        raise KneesegError(f"{flag} {given}: {hint}")
    return folder
