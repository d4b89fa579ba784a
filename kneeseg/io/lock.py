"""One writer at a time: ``flock`` on a hidden lock file (the holder's process id inside).

The operating system releases a lock when its process ends, however it ends, so a killed command
never leaves a stale lock; the file it leaves is taken over by the next command. A lock may be
shared (several holders: the parts of one study, each also holding its own part's lock) or
exclusive (one holder). Each holder checks, once locked, that the file it holds is still the one
under the name (a holder that released it may have removed it meanwhile), so two commands never
hold two files of the same name.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class FileLock:
    """``flock`` on ``path`` (its folder created if needed). ``acquire`` returns False when another
    process holds it (:meth:`holder` says which); ``release`` drops it and removes the file when no
    one else holds it (a refused process never touches it)."""

    def __init__(self, path: Path, shared: bool = False):
        self.path, self.shared = Path(path), shared
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # each retry follows a holder that removed the file between our open and our lock
            handle = open(self.path, "a+")  # held open until release: the lock lives as long as the handle
            try:
                fcntl.flock(handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            try:
                current = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                handle.seek(0)
                handle.truncate()  # a shared holder leaves it empty: a pid inside names an exclusive holder
                if not self.shared:
                    handle.write(f"{os.getpid()}\n")
                    handle.flush()
                self._file = handle
                return True
            handle.close()
        return False

    def holder(self) -> str:
        """The process id the lock file names (an exclusive holder's), or ''."""
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._file is None:
            return
        try:  # the last holder removes the file: nothing of the lock stays beside the outputs
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # another shared holder still has it; the last one removes it
        finally:
            self._file.close()
            self._file = None
