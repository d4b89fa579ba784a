"""Where raw data, preprocessed data and results live: resolved once, here, then passed down.

Precedence: explicit argument (CLI flag) > environment variable > ``./kneeseg_data/<kind>``.
No other module reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_RAW = "KNEESEG_RAW"
ENV_PREPROCESSED = "KNEESEG_PREPROCESSED"
ENV_RESULTS = "KNEESEG_RESULTS"


@dataclass(frozen=True)
class KneesegPaths:
    raw: Path
    preprocessed: Path
    results: Path


def resolve_paths(
    raw: str | os.PathLike | None = None,
    preprocessed: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    default_root: str | os.PathLike = "kneeseg_data",
) -> KneesegPaths:
    """Resolve the three data roots from flags, then ``env`` (normally ``os.environ``), then defaults."""
    env = {} if env is None else env
    root = Path(default_root)

    def pick(flag, var, sub):
        if flag is not None:
            return Path(flag)
        if env.get(var):
            return Path(env[var])
        return root / sub

    return KneesegPaths(
        raw=pick(raw, ENV_RAW, "raw"),
        preprocessed=pick(preprocessed, ENV_PREPROCESSED, "preprocessed"),
        results=pick(results, ENV_RESULTS, "results"),
    )
