"""kneeseg_export_model MODEL_DIR -o model.zip: a trained model as one zip to share.

The zip holds plans.json, dataset.json, model.json, postprocessing.json and MODEL_CARD.md when the
folder has them, and per fold the network's weights only (half precision unless --fp32; no
optimizer state or training history), with a manifest of sha256 sums that kneeseg_install_model
checks. A fold's final checkpoint shrinks to about a tenth of its size.
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.api import export_model
from kneeseg.cli.common import parser
from kneeseg.errors import cli_entry


@cli_entry("kneeseg_export_model")
def main(argv=None):
    p = parser("kneeseg_export_model", __doc__)
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="trained model folder (plans.json, dataset.json, fold_*/)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the zip to write")
    p.add_argument("-f", "--folds", nargs="+", help="folds to export (default: every fold with a checkpoint_final.pth)")
    p.add_argument("--fp32", action="store_true", help="keep the weights in float32 (default float16: half the size)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    manifest = export_model(args.model_dir, args.output, args.folds, half=not args.fp32, overwrite=args.overwrite)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB: {manifest['dataset']} {manifest['model']}, "
          f"fold(s) {', '.join(manifest['folds'])}, {manifest['dtype']})")
    return 0
