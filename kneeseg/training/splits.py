"""Cross-validation splits, made once per dataset and kept in splits_final.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneeseg.errors import KneesegError
from kneeseg.io import atomic_write_json, read_json

MAX_FOLDS = 5


def make_splits(case_ids: list[str], seed: int = 0) -> list[dict[str, list[str]]]:
    """5 folds (fewer cases: one fold per case; one case: it is both train and val)."""
    ids = sorted(case_ids)
    if len(ids) == 1:
        return [{"train": ids, "val": ids}]
    k = min(MAX_FOLDS, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, k)
    return [
        {"train": sorted(ids[i] for i in order if i not in set(f)), "val": sorted(ids[i] for i in f)}
        for f in folds
    ]


def load_or_make_splits(path: Path, case_ids: list[str], seed: int = 0) -> list[dict[str, list[str]]]:
    """The splits in ``path``, or new ones (not written: :func:`save_splits` does that once a training
    starts, so that a refused training leaves nothing behind)."""
    if path.exists():
        splits = read_json(path)
        known = set(case_ids)
        for fold in splits:
            missing = set(fold["train"]) | set(fold["val"])
            if not missing <= known:
                raise KneesegError(f"{path}: names cases that are not preprocessed: {sorted(missing - known)[:3]}")
        return splits
    return make_splits(case_ids, seed)


def save_splits(path: Path, splits: list[dict[str, list[str]]]) -> None:
    """Write ``splits`` unless ``path`` holds them already (every later training reads the same folds)."""
    if not path.exists():
        atomic_write_json(path, splits)


def fold_cases(splits: list[dict[str, list[str]]], fold: str | int, where: Path) -> tuple[list[str], list[str]]:
    """(train, val) case ids of ``fold`` (an index, or 'all': everything, validated on itself)."""
    if str(fold) == "all":
        everything = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
        return everything, everything
    try:
        index = int(fold)
    except ValueError:
        raise KneesegError(f"fold '{fold}': must be 0..{len(splits) - 1} or 'all'") from None
    if not 0 <= index < len(splits):
        raise KneesegError(f"fold {index}: {where} has {len(splits)} fold(s) (0..{len(splits) - 1}) or 'all'")
    return splits[index]["train"], splits[index]["val"]
