"""The one exception type users see, and the wrapper that turns it into a one-line CLI error."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable


class KneesegError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The message should name the offending file (or dataset, or option) first, then the problem,
    e.g. ``"/data/case_0000.nii.gz: contains NaN"``. Several problems found together (dataset
    verification) are joined by newlines and printed one line each.
    """


def cli_entry(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a CLI ``main``: a KneesegError becomes ``prog: error: message`` and exit code 2, and so
    does a path the file system refuses as too long (it refuses it the first time the path is looked
    at, before anything is written; a name that fits, but not with its temporary name, is refused by
    kneeseg.io.atomic)."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
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

        return run

    return wrap
