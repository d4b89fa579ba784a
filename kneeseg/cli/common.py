"""Argument helpers shared by the command-line tools (parsing only; no pipeline logic here)."""

from __future__ import annotations

import argparse
import os

from kneeseg import __version__
from kneeseg.paths import KneesegPaths, resolve_paths


def parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """An argument parser for command ``prog`` described by its module's docstring, with --version."""
    p = argparse.ArgumentParser(prog=prog, description=doc, **kwargs)
    p.add_argument("--version", action="version", version=f"%(prog)s (kneeseg {__version__})")
    return p


def add_path_flags(parser: argparse.ArgumentParser, results_only: bool = False) -> None:
    """--raw, --preprocessed and --results (only --results for a command that reads no data)."""
    if results_only:
        group = parser.add_argument_group("data roots (default: $KNEESEG_RESULTS, else ./kneeseg_data/results)")
    else:
        group = parser.add_argument_group("data roots (default: $KNEESEG_RAW / $KNEESEG_PREPROCESSED / $KNEESEG_RESULTS, else ./kneeseg_data/...)")
        group.add_argument("--raw", help="raw datasets folder")
        group.add_argument("--preprocessed", help="preprocessed data folder")
    group.add_argument("--results", help="trained models folder")


def paths_from(args: argparse.Namespace) -> KneesegPaths:
    return resolve_paths(getattr(args, "raw", None), getattr(args, "preprocessed", None), getattr(args, "results", None), os.environ)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def share(text: str) -> float:
    """A fraction from 0 to 1 (argparse type)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be from 0 to 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value
