"""kneeseg_find_postprocessing: choose post-processing on the cross-validation predictions.

Writes postprocessing.json beside the model; kneeseg_predict applies it by default.
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.api import find_postprocessing
from kneeseg.cli.common import add_path_flags, parser, paths_from
from kneeseg.errors import cli_entry
from kneeseg.hardware import resolve_device
from kneeseg.postprocessing.operations import describe_steps


@cli_entry("kneeseg_find_postprocessing")
def main(argv=None):
    p = parser("kneeseg_find_postprocessing", __doc__)
    p.add_argument("-d", "--dataset")
    p.add_argument("-c", "--configuration")
    p.add_argument("-tr", "--trainer", help="trainer whose model to use (default: the one trained)")
    p.add_argument("-m", "--model-dir", type=Path)
    p.add_argument("--device", default="auto", help="picks the recommended configuration when several are trained")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_path_flags(p)
    args = p.parse_args(argv)
    result = find_postprocessing(paths_from(args), args.dataset, args.configuration, args.model_dir,
                                 resolve_device(args.device), args.progress, args.trainer)
    print(f"mean Dice {result['mean_dice_before']:.4f} -> {result['mean_dice_after']:.4f} on {result['cv_cases']} "
          f"cross-validation case(s); steps: {describe_steps(result['steps'])}")
    return 0
