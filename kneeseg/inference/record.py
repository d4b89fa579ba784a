"""The record of a study: which input made which output, with which model and options.

A folder run writes ``study.csv`` in its output folder (``study_partKofN.csv`` for a part of a shared
study), one row per case written: case id, input file(s), output, the signature of the model and
options that made it, a stamp of its input files (size and modification time of each, every
file of a DICOM series folder) and the sha256 of the output as written. The row is completed once
every file of the case is written (label map, probabilities, statistics, overlay), and the file is
rewritten whole after each case, so a run killed at scan 40 of 100 has 39 complete rows; the cases
it was still to make have rows without a signature (begun, not finished), which say that their
files, if any, are kneeseg's to redo. The next run over the same folder skips a case whose row
carries the same signature and input stamp and whose files all exist, and predicts the others
again: a case made by another model (retrained, other folds), with other options or from an input
changed since is redone, never left stale; how a path is spelt (relative, absolute, through a
link) does not matter; ``--overwrite`` redoes every case. The rows are also what says which files
in the folder kneeseg made (:meth:`StudyRecord.made_by_kneeseg`): a label map replaced by hand since
(another sha256) is not, so it is not replaced without ``--overwrite``. Two patients never collide: case ids are unique in a study
(kneeseg.inference.cases), and the record says which series each output came from.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from kneeseg.inference.cases import InputCase
from kneeseg.inference.model import TrainedModel
from kneeseg.io import atomic_write_text
from kneeseg.io.protect import sha256_of, starts_with

COLUMNS = ("case", "inputs", "output", "signature", "inputs_stamp", "output_sha256")
HEADER = ",".join(COLUMNS[:5])  # a record written before outputs had their sha256 lacks the last column
RECORD_NAME = re.compile(r"^study(_part\d+of\d+)?\.csv$")


def study_signature(model: TrainedModel, options: dict) -> str:
    """What makes two predictions of one scan the same: the model's files and its second reader's
    (weights by size and modification time, plans, post-processing) and every option that changes an output."""
    files = [f for m in model.readers for f in (m.folder / "plans.json", m.postprocessing_file, *m.checkpoints)]
    identity = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()]
    return hashlib.sha256(json.dumps([identity, options], sort_keys=True, default=str).encode()).hexdigest()[:16]


def inputs_stamp(case: InputCase) -> str | None:
    """The size and modification time of every file a case is read from (a DICOM series folder: each
    file in it), as ``make`` and ``rsync`` tell a changed file, without reading a byte of it; None
    when a file cannot be looked at (the case's reading will say why)."""
    try:
        files: list[Path] = []
        for channel in map(Path, case.channels):
            files += sorted(f for f in channel.iterdir() if f.is_file()) if channel.is_dir() else [channel]
        stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    except OSError:
        return None
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file's bytes, or None when it cannot be read."""
    try:
        return sha256_of(path)
    except OSError:
        return None


def is_study_record(path: Path) -> bool:
    """Whether ``path`` is a study record kneeseg wrote (its name and header line), not a table of
    the user's that happens to be called study.csv."""
    return bool(RECORD_NAME.match(path.name)) and starts_with(path, HEADER.encode())


class StudyRecord:
    """``folder/name`` for this run's rows; the rows of every ``study*.csv`` in ``folder`` say what is done.
    The inputs of ``cases`` are stamped now, before any is predicted: a scan still being copied in
    while its case runs is recorded as it was, so the next run sees the change."""

    def __init__(self, folder: Path, name: str, signature: str, cases: Sequence[InputCase]):
        self.path, self.signature = Path(folder) / name, signature
        self.existed = self.path.exists()
        self.rows: dict[str, dict] = {}  # this run's: the cases it skipped or wrote
        self.previous: dict[str, list[dict]] = {}  # every earlier run's rows per case, parts included
        for path in sorted(Path(folder).glob("study*.csv")) if Path(folder).is_dir() else []:
            if not is_study_record(path):
                continue
            with open(path, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    self.previous.setdefault(row.get("case", ""), []).append(row)
        self.stamps = {case.case_id: inputs_stamp(case) for case in cases}

    def _made(self, case: InputCase) -> dict | None:
        """An earlier row of this case by this model with these options from its inputs as they are
        now. The output is this record's folder's (the record sits beside the outputs), so its name
        says which."""
        stamp = self.stamps[case.case_id]
        return next((row for row in self.previous.get(case.case_id, []) if stamp is not None
                     and row.get("signature") == self.signature and row.get("inputs_stamp") == stamp
                     and Path(row.get("output", "")).name == case.output.name), None)

    def _recorded(self, case: InputCase) -> list[dict]:
        return [row for row in self.previous.get(case.case_id, []) if Path(row.get("output", "")).name == case.output.name]

    def made_by_kneeseg(self, case: InputCase, path: Path) -> bool:
        """Whether an earlier run recorded making this case (finished or begun), so that ``path``, one
        of its files, is kneeseg's to replace; the label map itself only as written (its sha256, where
        recorded: one changed by hand since is the user's)."""
        rows = self._recorded(case)
        if Path(path) != case.output:
            return bool(rows)
        hashes = {row.get("output_sha256") or None for row in rows}
        return bool(rows) and (None in hashes or file_sha256(case.output) in hashes)

    def done(self, case: InputCase, files: Sequence[Path]) -> bool:
        """Made as this run would make it (``_made``), and every file still there."""
        return self._made(case) is not None and all(Path(f).exists() for f in files)

    def keep(self, cases: Sequence[InputCase]) -> None:
        """The skipped cases' rows go on in this run's record (written once for all of them)."""
        for case in cases:
            row = self._made(case)
            assert row is not None, "keep() takes the cases done() found made"
            self.rows[case.case_id] = row
        if cases:
            self._write()

    def begin(self, cases: Sequence[InputCase]) -> None:
        """Rows without a signature for the cases this run is about to make: a run killed midway
        leaves them, and the next run knows those cases' files as kneeseg's."""
        for case in cases:
            self.rows[case.case_id] = self._row(case, "", None)
        if cases:
            self._write()

    def add(self, case: InputCase) -> None:
        self.rows[case.case_id] = self._row(case, self.signature, file_sha256(case.output))
        self._write()

    def end(self) -> None:
        """The rows of cases begun and not made (they failed) go: their files were removed. A record
        this run began and left without rows goes too."""
        unfinished = [case for case, row in self.rows.items() if not row["signature"]]
        for case in unfinished:
            del self.rows[case]
        if not self.rows and not self.existed:
            self.path.unlink(missing_ok=True)
        elif unfinished:
            self._write()

    def _row(self, case: InputCase, signature: str, output_sha256: str | None) -> dict:
        return {"case": case.case_id, "inputs": ";".join(str(p) for p in case.channels), "output": str(case.output),
                "signature": signature, "inputs_stamp": self.stamps[case.case_id], "output_sha256": output_sha256}

    def _write(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(COLUMNS), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for case in sorted(self.rows):
            writer.writerow(self.rows[case])
        atomic_write_text(self.path, text.getvalue())
