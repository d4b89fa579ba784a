"""What a prediction writes: checked before the networks are loaded, and one writer per study folder.

Before the model is even read (:func:`check_output_paths`): ``-o`` names a label map file (any
case: ``OUT.NII.GZ`` is written as NIfTI) or a folder; the folders for outputs, overlays and meshes
are writable or can be made; no output is an input or lies in an input folder. Once the cases are
known (:class:`PredictionFiles`): every file the run would replace is one kneeseg recorded making
(a row of the folder's study record, or kneeseg's mark in the file: kneeseg.io.protect), else it is
refused unless ``--overwrite``: a hand-drawn label map, a dataset's labelsTr, a file of the same
name from elsewhere. A folder run holds :class:`StudyLock` while it writes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.inference.cases import InputCase, beside, single_output
from kneeseg.inference.record import StudyRecord, is_study_record
from kneeseg.inference.study import StudyOptions, label_description_files, probabilities_path
from kneeseg.io import OUTPUT_ENDINGS, refuse_overwriting_inputs
from kneeseg.io.atomic import check_name_length, name_limit, refuse_special_file
from kneeseg.io.dicomseg import DICOM_SEG_ENDING
from kneeseg.io.image import file_ending
from kneeseg.io.labelfiles import is_label_description
from kneeseg.io.lock import FileLock
from kneeseg.io.protect import check_output_file, check_output_folder, holds_within, refuse_replacing, starts_with

OUTPUT_TYPES = ("label-map", "dicom-seg")


def check_output_paths(inp: Path, out: Path, study: StudyOptions) -> None:
    """Every output path of a prediction checked, before the model is read: one line naming the first wrong."""
    if study.output_type not in OUTPUT_TYPES:
        raise KneesegError(f"--output-type {study.output_type}: use label-map or dicom-seg")
    if study.stl_faces is not None and study.stl is None:
        raise KneesegError(f"--stl-faces {study.stl_faces}: only used with --stl DIR")
    if inp.is_dir() and out.exists() and out.resolve() == inp.resolve():
        raise KneesegError(f"{out}: is the input folder; write the predictions to another folder")
    if single_output(out):  # first: the file system answers any look at a longer name with an OSError
        check_name_length(out, beside(out))
    elif len(os.fsencode(out.name)) > name_limit(out.parent):
        raise KneesegError(f"{out}: folder name too long: {len(os.fsencode(out.name))} bytes, where this folder takes at most "
                           f"{name_limit(out.parent)}; choose a shorter name")
    if study.output_type == "dicom-seg" and single_output(out) and file_ending(out) != DICOM_SEG_ENDING:
        raise KneesegError(f"{out}: --output-type dicom-seg writes a DICOM SEG, CASE{DICOM_SEG_ENDING}, and this output "
                           f"ends in {file_ending(out)}; give -o ending in {DICOM_SEG_ENDING} or a folder, or leave out --output-type")
    folders = [Path(f) for f in (study.overlays, study.stl) if f is not None]
    for path in (out, *folders):
        refuse_special_file(path)  # a named pipe or a device is no file or folder to write to
    refuse_overwriting_inputs([out, *folders], [inp])
    if single_output(out):
        check_output_file(out)
    elif out.suffix and not out.is_dir():  # e.g. bones.stl: an image that cannot be written
        raise KneesegError(f"{out}: cannot write a label map as '{out.suffix}' (use {', '.join(OUTPUT_ENDINGS)}, "
                           "or a folder; a folder whose name has a dot must exist already)")
    else:
        check_output_folder(out)
    for folder in folders:
        check_output_folder(folder)


class PredictionFiles:
    """Every file a prediction run writes, per case and for the study; ``bones``: the model's
    foreground labels (the meshes' names), ``record``: a folder run's study record (None for one file)."""

    def __init__(self, study: StudyOptions, bones: Sequence[str], save_probabilities: bool, label_descriptions: str | None,
                 statistics_csv: Path | None, record: StudyRecord | None):
        self.study, self.bones, self.save_probabilities = study, list(bones), save_probabilities
        self.label_descriptions, self.statistics_csv, self.record = label_descriptions, statistics_csv, record

    def mesh_folder(self, case: InputCase) -> Path:
        assert self.study.stl is not None
        return Path(self.study.stl) / case.case_id if self.record is not None else Path(self.study.stl)

    def made(self, case: InputCase) -> list[Path]:
        """What a case must still have for a resumed run to skip it (the mesh folder: a case may have no bone)."""
        from kneeseg.export.statistics import statistics_path

        s = self.study
        return [case.output, *([probabilities_path(case.output)] if self.save_probabilities else []),
                *([statistics_path(case.output)] if s.statistics else []),
                *([Path(s.overlays) / f"{case.case_id}.png"] if s.overlays else []),
                *([self.mesh_folder(case)] if s.stl else [])]

    def written(self, case: InputCase) -> list[Path]:
        """Every file a case may write (each bone's mesh), then the folders made for it."""
        meshes = [self.mesh_folder(case) / f"{bone}.stl" for bone in self.bones] if self.study.stl else []
        return [*[p for p in self.made(case) if not self.study.stl or p != self.mesh_folder(case)], *meshes,
                *([self.mesh_folder(case)] if self.study.stl else [])]

    def of_study(self, cases: Sequence[InputCase]) -> list[Path]:
        """The files written once for the cases: label descriptions, statistics table and review order, study record."""
        from kneeseg.export.statistics import review_order_path

        descriptions = [p for pair in label_description_files(cases, self.label_descriptions) for p in pair]
        return [*descriptions, *([self.statistics_csv, review_order_path(self.statistics_csv)] if self.statistics_csv else []),
                *([self.record.path] if self.record is not None else [])]

    def refuse_replacing(self, cases: Sequence[InputCase]) -> None:
        """Refuse (one line naming it) a file the run would replace that kneeseg has no record of
        making, unless ``--overwrite``; also a case's output name too long for the file system."""
        for case in cases:
            check_output_file(case.output)
            refuse_replacing(self.written(case), functools.partial(self._made_by_kneeseg, case=case), self.study.overwrite)
        refuse_replacing(self.of_study(cases), self._made_by_kneeseg, self.study.overwrite)

    def _made_by_kneeseg(self, path: Path, case: InputCase | None = None) -> bool:
        if path.is_dir():  # a case's mesh folder: its files are checked one by one
            return True
        if case is not None and self.record is not None and self.record.made_by_kneeseg(case, path):
            return True
        return has_kneeseg_mark(path, self.statistics_csv)


def has_kneeseg_mark(path: Path, statistics_csv: Path | None = None) -> bool:
    """Whether ``path`` is one of kneeseg's own files by what it holds: a label description, a study
    record, the statistics table or its review order, an STL bone or a QC overlay written by kneeseg."""
    name = path.name.lower()
    if is_study_record(path) or is_label_description(path):
        return True
    if statistics_csv is not None and path == statistics_csv:
        from kneeseg.export.statistics import is_statistics_table

        return is_statistics_table(path)
    if statistics_csv is not None:
        from kneeseg.export.statistics import is_review_order, review_order_path

        if path == review_order_path(statistics_csv):
            return is_review_order(path)
    if name.endswith(".stl"):
        from kneeseg.export.stl import STL_MARK

        return starts_with(path, STL_MARK)
    if name.endswith(".png"):
        from kneeseg.export.overlays import OVERLAY_MARK

        return holds_within(path, OVERLAY_MARK)
    return False


class StudyLock:
    """One ``kneeseg_predict`` writing into a study folder at a time: an exclusive lock on
    ``FOLDER/.kneeseg.lock`` for a whole study; the parts of a shared study (``part``:
    ``_partKofN``) hold it shared, each with its own part's lock. A second run is refused, naming the
    process that holds the folder; the lock files go with the last holder (kneeseg.io.lock)."""

    def __init__(self, folder: Path, part: str = ""):
        self.folder = Path(folder)
        self.study = FileLock(self.folder / ".kneeseg.lock", shared=bool(part))
        self.part = FileLock(self.folder / f".kneeseg{part}.lock") if part else None

    def __enter__(self) -> StudyLock:
        if not self.study.acquire():
            holders = [self.study.holder()] if self.study.holder() else \
                [FileLock(p).holder() for p in sorted(self.folder.glob(".kneeseg_part*.lock"))]
            self._busy(holders)
        if self.part is not None and not self.part.acquire():
            self.study.release()
            self._busy([self.part.holder()])
        return self

    def _busy(self, holders: list[str]) -> None:
        pids = [h for h in holders if h] or ["?"]
        raise KneesegError(f"{self.folder}: another kneeseg_predict is writing into this folder "
                           f"(process{'es' if len(pids) > 1 else ''} {', '.join(pids)})")

    def __exit__(self, *exc) -> None:
        if self.part is not None:
            self.part.release()
        self.study.release()
