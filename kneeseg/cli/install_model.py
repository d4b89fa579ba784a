"""kneeseg_install_model model.zip: a model shared with kneeseg_export_model, into the results folder.

It goes to RESULTS/DatasetNNN_Name/TRAINER__PLANS__CONFIG/, where kneeseg_predict finds it (or pass
that folder to kneeseg_predict -m). The whole archive is checked first (sha256 of every file, the
plans, each fold's weights against the plans' network); a broken or incompatible archive is refused
and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.api import install_model
from kneeseg.cli.common import add_path_flags, parser, paths_from
from kneeseg.errors import cli_entry


@cli_entry("kneeseg_install_model")
def main(argv=None):
    p = parser("kneeseg_install_model", __doc__)
    p.add_argument("archive", type=Path, metavar="MODEL_ZIP", help="a zip written by kneeseg_export_model")
    p.add_argument("--overwrite", action="store_true", help="replace a model installed under the same name (the whole folder)")
    add_path_flags(p, results_only=True)
    args = p.parse_args(argv)
    target = install_model(args.archive, paths_from(args), args.overwrite)
    print(f"installed {target}")
    return 0
