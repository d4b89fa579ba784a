"""The one exception type users see, and the wrapper that turns it into a one-line CLI error."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class KneesegError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The message should name the offending file (or dataset, or option) first, then the problem,
    e.g. ``"/data/case_0000.nii.gz: contains NaN"``. Several problems found together (dataset
    verification) are joined by newlines and printed one line each.
    """


def warn(text: str) -> None:
    """One warning line on stderr, ``kneeseg: warning: text``; written through tqdm so that a progress bar
    running meanwhile (a folder's prediction) stays whole."""
    from tqdm import tqdm

    tqdm.write(f"kneeseg: warning: {text}", file=sys.stderr)


class Terminated(BaseException):
    """SIGTERM received (a ``kill``, a scheduler's time limit): raised so that cleanups run, as for Ctrl-C."""


@contextlib.contextmanager
def terminated_as_exception() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in this process (its ``finally``
    blocks run: temporary files go), as Ctrl-C raises KeyboardInterrupt. A child forked meanwhile
    (a data loader's worker) dies of it as before. Only in the main thread, where Python handles signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked child inherited this handler: die as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli_entry(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a CLI ``main``: a KneesegError becomes ``prog: error: message`` and exit code 2, and so
    does a path the file system refuses as too long (it refuses it the first time the path is looked
    at, before anything is written; a name that fits, but not with its temporary name, is refused by
    kneeseg.io.atomic); Ctrl-C (130) and SIGTERM (143) end it with one line, after its cleanups ran."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                with terminated_as_exception():
                    return int(main(argv) or 0)
            except KneesegError as exc:
                for line in str(exc).splitlines() or [""]:  # several problems: one line each
                    print(f"{prog}: error: {line}", file=sys.stderr)
                return 2
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                print(f"{prog}: error: {exc.filename}: name too long for the file system; choose a shorter one", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except Terminated:
                print(f"{prog}: terminated", file=sys.stderr)
                return 143

        return run

    return wrap
