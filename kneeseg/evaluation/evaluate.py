"""Evaluating a folder (or file) of predictions against references: summary JSON + CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from kneeseg.errors import KneesegError
from kneeseg.evaluation.metrics import METRICS, label_metrics
from kneeseg.io import atomic_path, file_ending, read_image, refuse_special_file, strip_ending
from kneeseg.io.atomic import to_json_text
from kneeseg.io.protect import holds_within, starts_with


def pair_files(ref: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    """(case id, reference, prediction) pairs; every reference needs its prediction."""
    refuse_special_file(ref)
    refuse_special_file(pred)
    if ref.is_file() or pred.is_file():
        if not (ref.is_file() and pred.is_file()):
            raise KneesegError(f"{pred if ref.is_file() else ref}: give two files or two folders")
        return [(strip_ending(ref), ref, pred)]
    if not ref.is_dir():
        raise KneesegError(f"{ref}: reference folder not found")
    if not pred.is_dir():
        raise KneesegError(f"{pred}: prediction folder not found")
    refs = sorted(p for p in ref.iterdir() if p.is_file() and file_ending(p))
    if not refs:
        raise KneesegError(f"{ref}: no label images found")
    preds = {strip_ending(p): p for p in pred.iterdir() if p.is_file() and file_ending(p)}
    pairs = []
    for r in refs:
        case = strip_ending(r)
        if case not in preds:
            raise KneesegError(f"{pred / r.name}: prediction missing for reference {r.name}")
        pairs.append((case, r, preds[case]))
    return pairs


def evaluate_pair(ref_path: Path, pred_path: Path, labels: dict[str, int]) -> dict[str, dict[str, float]]:
    ref, ref_geometry = read_image(ref_path)
    pred, pred_geometry = read_image(pred_path)
    problem = ref_geometry.matches(pred_geometry)
    if problem:
        raise KneesegError(f"{pred_path}: geometry does not match the reference {ref_path.name} ({problem})")
    known = {0, *labels.values()}
    for path, image in ((ref_path, ref), (pred_path, pred)):
        unknown = sorted(int(v) for v in np.unique(image) if int(v) not in known)
        if unknown:  # it would be left out of every metric without a word
            raise KneesegError(f"{path}: holds label value(s) {unknown}, not among the labels evaluated "
                               f"({', '.join(f'{n} {v}' for n, v in labels.items())}); give their dataset.json with --dataset-json")
    return label_metrics(ref, pred, ref_geometry.spacing_zyx, labels)


def summarize(per_case: list[dict]) -> tuple[dict, dict]:
    structures = per_case[0]["metrics"].keys()
    mean = {s: {m: float(np.mean([c["metrics"][s][m] for c in per_case])) for m in METRICS} for s in structures}
    std = {s: {m: float(np.std([c["metrics"][s][m] for c in per_case])) for m in METRICS} for s in structures}
    return mean, std


def evaluate(ref: Path, pred: Path, labels: dict[str, int], output: Path | None = None, progress: bool = True) -> dict:
    """Evaluate and (optionally) write ``output`` (.json) and the same name with .csv beside it."""
    from tqdm import tqdm

    pairs = pair_files(Path(ref), Path(pred))
    per_case = [{"case": case, "reference": str(r), "prediction": str(p), "metrics": evaluate_pair(r, p, labels)}
                for case, r, p in tqdm(pairs, desc="evaluating", disable=not progress)]
    mean, std = summarize(per_case)
    summary = {"labels": labels, "definitions": DEFINITIONS, "mean": mean, "std": std, "per_case": per_case}
    if output is not None:
        write_summary(Path(output), summary)
    return summary


DEFINITIONS = "see kneeseg/evaluation/metrics.py (distances in mm)"
CSV_HEADER = ",".join(["case", "structure", *METRICS])


def summary_files(output: Path) -> list[Path]:
    """The summary JSON ``output`` and its CSV, the same name ending in .csv."""
    return [Path(output), Path(output).with_suffix(".csv")]


def is_summary(path: Path) -> bool:
    """Whether ``path`` is a summary JSON or CSV that kneeseg_evaluate wrote (its first lines say so)."""
    return holds_within(path, f'"definitions": "{DEFINITIONS}"'.encode(), 4096) or starts_with(path, CSV_HEADER.encode())


def write_summary(output: Path, summary: dict) -> None:
    """The summary JSON and its CSV (one row per case and structure), both or neither."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "structure", *METRICS])
    for c in summary["per_case"]:
        for s, values in c["metrics"].items():
            writer.writerow([c["case"], s, *(f"{values[m]:.6g}" for m in METRICS)])
    json_path, csv_path = summary_files(output)
    with atomic_path(json_path) as json_tmp, atomic_path(csv_path) as csv_tmp:  # renamed once both are written
        json_tmp.write_text(to_json_text(summary), encoding="utf-8")
        csv_tmp.write_text(buffer.getvalue(), encoding="utf-8")
