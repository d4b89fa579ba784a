"""One training per fold folder at a time: an exclusive lock on ``fold_N/.lock`` (kneeseg.io.lock)."""

from __future__ import annotations

from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io.lock import FileLock


class FoldLock:
    def __init__(self, fold_dir: Path):
        self._lock = FileLock(fold_dir / ".lock")
        self.path = self._lock.path

    def acquire(self) -> None:
        """Take the lock (creating the fold folder), or a KneesegError naming the process that holds it."""
        if not self._lock.acquire():
            raise KneesegError(f"{self.path.parent}: another training of this fold is running (process {self._lock.holder() or '?'})")

    def release(self) -> None:
        """Drop the lock and its file (only the holder does: a refused process never touches it)."""
        self._lock.release()
