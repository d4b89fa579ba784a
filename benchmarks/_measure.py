"""Run a command as a child process and report its wall time and peak resident memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path


def run_measured(cmd: list[str], env: dict | None = None, quiet: bool = True, stderr: Path | None = None) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit code) of ``cmd`` (children it waits for are included);
    ``stderr``: a file that receives its standard error."""
    start = time.perf_counter()
    out = subprocess.DEVNULL if quiet else None
    with open(stderr, "w") if stderr is not None else contextlib.nullcontext(out) as err:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024.0, proc.returncode


def kneeseg_command(module: str, *args: str) -> list[str]:
    """The console script ``module`` run with this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-c", f"import sys; from kneeseg.cli.{module} import main; sys.exit(main())", *args]
