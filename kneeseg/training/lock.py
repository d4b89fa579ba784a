"""One training per fold folder at a time.

An exclusive ``flock`` on ``fold_N/.lock`` (the holder's process id inside). The operating system
releases it when the process ends, however it ends, so a killed training never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from kneeseg.errors import KneesegError


class FoldLock:
    def __init__(self, fold_dir: Path):
        self.path = fold_dir / ".lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (creating the fold folder), or a KneesegError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # held open until release: the lock lives as long as the handle
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise KneesegError(f"{self.path.parent}: another training of this fold is running (process {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Drop the lock and its file (only the holder does: a refused process never touches it)."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None
