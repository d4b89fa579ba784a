"""Atomic writes: everything goes to a temporary name beside the target, then is renamed.

A crash or an error therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kneeseg.errors import KneesegError


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder ('a character device'
    for /dev/null, 'a named pipe (FIFO)', ...), else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def refuse_special_file(path: str | os.PathLike) -> None:
    """A KneesegError for a path that is neither a regular file nor a folder: kneeseg reads and writes only
    those (reading a named pipe would wait forever, replacing /dev/null would break the system)."""
    kind = special_file_kind(path)
    if kind is not None:
        raise KneesegError(f"{path}: is {kind}, not a file or folder")


# atomic_path's temporary name adds a leading dot, '.tmp' and the process id (up to 7 digits) to a name.
_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:16] or "host"
TEMPORARY_MARK = ".kneeseg-tmp-"
_TEMPORARY_EXTRA = len(".") + len(TEMPORARY_MARK) + len(_HOST) + len("-") + 7  # temporary_path's additions (a pid of <= 7 digits)


def name_limit(folder: Path) -> int:
    """The longest file name (bytes) that ``folder``'s file system takes (NAME_MAX; 255 where it cannot be asked)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # a folder not made yet: its file system is its nearest existing ancestor's
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_name_length(target: str | os.PathLike, beside: int = 0) -> None:
    """A KneesegError when ``target``'s name is too long for its folder once kneeseg writes it through a
    temporary name (and, with ``beside``, a file named after it that is that many bytes longer)."""
    target = Path(target)
    length = len(os.fsencode(target.name))
    room = name_limit(target.parent) - _TEMPORARY_EXTRA - beside
    if length > room:
        also = " and files named after it" if beside else ""
        raise KneesegError(f"{target}: file name too long: {length} bytes, where at most {room} fit (this folder takes "
                           f"names of {room + _TEMPORARY_EXTRA + beside} bytes, and kneeseg writes it{also} through "
                           "a temporary name); choose a shorter name")


def ensure_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed; a folder that cannot be made or written is a KneesegError."""
    if folder.exists() and not folder.is_dir():
        raise KneesegError(f"{folder}: exists and is not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KneesegError(f"{folder}: cannot create output folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise KneesegError(f"{folder}: output folder is not writable")


def refuse_overwriting_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """A KneesegError naming the first output that would replace one of the command's input files
    (also through a link) or be written into an input folder (a DICOM series): no command modifies
    what it was given. Called before anything is computed or written."""
    protected = [Path(p).resolve() for p in inputs if Path(p).exists()]
    for out in outputs:
        target = Path(out).resolve()
        for source in protected:
            same = target == source or (target.exists() and os.path.samefile(target, source))
            if same or (source.is_dir() and source in target.parents):
                raise KneesegError(f"{out}: would {'replace' if same else 'be written into'} the input {source}; "
                                   "choose another output")


_TEMPORARY = re.compile(r"^\.(?P<stem>.*)" + re.escape(TEMPORARY_MARK) + r"(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)(\..*)?$")


def temporary_path(target: str | os.PathLike) -> Path:
    """Where ``target`` is written before it is renamed: a hidden name beside it that says whose it
    is, ``x.NII.GZ`` -> ``.x.kneeseg-tmp-HOST-PID.nii.gz``. The ending is kept, in lower case, for
    the writers that choose the format by it (SimpleITK knows ``.nii.gz``, not ``.NII.GZ``)."""
    target = Path(target)
    name = target.name
    dot = name.find(".")
    stem, ending = (name, "") if dot <= 0 else (name[:dot], name[dot:])
    return target.parent / f".{stem}{TEMPORARY_MARK}{_HOST}-{os.getpid()}{ending.lower()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (:func:`temporary_path`) that a process of this machine, killed
    before it could clean up (SIGKILL, power loss), left in ``folder``; those of a live process
    or of another machine stay. Returns the files removed."""
    removed = []
    try:
        names = [p for p in Path(folder).iterdir() if p.name.startswith(".") and TEMPORARY_MARK in p.name]
    except OSError:
        return []
    for path in names:
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == _HOST and not _alive(int(match["pid"])) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (:func:`temporary_path`); rename it onto ``target``
    if the block succeeds. On any exception, KeyboardInterrupt included (and SIGTERM, which
    kneeseg's commands turn into an exception: kneeseg.errors.cli_entry), the temporary file is
    removed; one left by a killed process is removed by the next command writing there."""
    target = Path(target)
    refuse_special_file(target)
    if target.is_dir():
        raise KneesegError(f"{target}: is a folder; give a file name")
    check_name_length(target)
    ensure_writable_folder(target.parent)
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")  # not the locale's: names and units may not be ASCII


_SCALAR_LIST = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]", re.S)


def to_json_text(obj: Any) -> str:
    """Indented JSON in which lists of numbers/strings stay on one line (readable plans)."""
    text = json.dumps(obj, indent=2)
    compact = _SCALAR_LIST.sub(lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)
    # A bracket inside a string could fool the pattern: keep the compact form only if it reads back.
    return (compact if json.loads(compact) == json.loads(text) else text) + "\n"


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as readable JSON (keys in the order given), atomically."""
    atomic_write_text(target, to_json_text(obj))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is a one-line KneesegError."""
    path = Path(path)
    refuse_special_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KneesegError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise KneesegError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise KneesegError(f"{path}: cannot read ({exc.strerror})") from None
