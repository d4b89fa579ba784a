"""What a command may write: its output paths checked before any work, no file replaced that kneeseg
has no record of making (unless ``--overwrite``), and nothing new left behind when it fails.

A file counts as kneeseg's when its command can tell: a row of a study record names it (kneeseg.
inference.record), or it carries kneeseg's mark (the header line of a label description, a
statistics or study table, an evaluation summary; an STL header; a PNG's Software text).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io.atomic import check_name_length


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def check_output_folder(folder: str | os.PathLike, named: str | os.PathLike | None = None) -> None:
    """A KneesegError (naming ``named``, the file to go there, or else the folder) unless ``folder``
    is a writable folder or can be made as one; nothing is created."""
    folder = Path(folder)
    name = named if named is not None else folder
    existing = _nearest_existing(folder)
    if not existing.is_dir() and existing == Path(os.path.abspath(folder)) and named is None:
        raise KneesegError(f"{folder}: exists and is not a folder; give a folder")
    if not existing.is_dir():
        raise KneesegError(f"{name}: cannot create output folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KneesegError(f"{name}: output folder is not writable" if existing == Path(os.path.abspath(folder))
                           else f"{name}: cannot create output folder ({existing} is not writable)")


def check_output_file(path: str | os.PathLike) -> None:
    """A KneesegError unless ``path`` can be written as a file: not a folder, its folder writable or
    creatable, its name (and the temporary name it is written under first) not too long here."""
    path = Path(path)
    check_name_length(path)  # first: a name too long for the file system fails any look at the path
    if path.is_dir():  # the file would be written in its place only after the work
        raise KneesegError(f"{path}: is a folder, and its name ends like an output file; give a file name, or a folder "
                           "whose name does not end like one")
    check_output_folder(path.parent, path)


def starts_with(path: str | os.PathLike, prefix: bytes) -> bool:
    """Whether the file ``path`` begins with ``prefix`` (False for a folder or an unreadable file)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def holds_within(path: str | os.PathLike, mark: bytes, first: int = 4096) -> bool:
    """Whether ``mark`` occurs in the first ``first`` bytes of the file ``path``."""
    try:
        with open(path, "rb") as f:
            return mark in f.read(first)
    except OSError:
        return False


def refuse_replacing(paths: Iterable[str | os.PathLike], made_by_kneeseg: Callable[[Path], bool], overwrite: bool = False) -> None:
    """A KneesegError naming the first of ``paths`` that exists and that ``made_by_kneeseg`` does
    not recognise, unless ``overwrite``. Called before anything is computed or written."""
    if overwrite:
        return
    for path in map(Path, paths):
        if (path.exists() or path.is_symlink()) and not made_by_kneeseg(path):
            raise KneesegError(f"{path}: exists and kneeseg has no record of writing it; use --overwrite to replace it")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def removed_on_failure(paths: Iterable[str | os.PathLike]) -> Iterator[None]:
    """On any exception in the block: remove each file of ``paths`` that the block wrote (new, or
    replaced since the block began: an atomic write gives a new inode) and each folder it created
    on the way to them (a path of ``paths`` may be a folder) if left empty; then re-raise. A failed
    command so leaves nothing new behind."""
    files = [Path(p) for p in paths]
    before = {p: _stamp(p) for p in files}
    new_folders = {f for p in files for f in (p, *p.parents) if not (f.exists() or f.is_symlink())}
    try:
        yield
    except BaseException:
        for path in files:
            if path.is_file() and _stamp(path) != before[path]:
                path.unlink(missing_ok=True)
        for folder in sorted(new_folders, key=lambda f: len(f.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read a MiB at a time (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
