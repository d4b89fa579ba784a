"""kneeseg_evaluate -ref LABELS -pred PREDS -o summary.json: metrics per case and bone.

Dice, IoU, HD95, ASSD, average Hausdorff distance (mm), volume similarity, sensitivity, precision,
per bone and for the union of all bones; means and std; JSON and CSV (same name, .csv).
Average Hausdorff comes twice: avg_hausdorff_max, the larger of the two directed mean distances
(Taha & Hanbury), and avg_hausdorff_mean, their mean (ITK's filter and pymia, the reference paper's).
A file that kneeseg_evaluate did not write (a dataset.json, say) is not replaced without --overwrite,
and its inputs never are; a failed evaluation leaves nothing new.
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.api import evaluate
from kneeseg.cli.common import parser
from kneeseg.errors import KneesegError, cli_entry


@cli_entry("kneeseg_evaluate")
def main(argv=None):
    p = parser("kneeseg_evaluate", __doc__)
    p.add_argument("-ref", "--reference", required=True, type=Path, help="label file or folder")
    p.add_argument("-pred", "--prediction", required=True, type=Path, help="prediction file or folder")
    p.add_argument("-o", "--output", type=Path, default=Path("summary.json"))
    p.add_argument("--dataset-json", type=Path, help="take label names and values from this dataset.json")
    p.add_argument("--overlays", type=Path, help="folder for QC PNGs (prediction solid, reference dashed)")
    p.add_argument("--images", type=Path, help="folder with the scans (CASE_0000.*) to draw the overlays on")
    p.add_argument("--overwrite", action="store_true", help="replace files that kneeseg_evaluate did not write "
                   "(default: refused; its inputs are never replaced)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.output.suffix.lower() != ".json":
        raise KneesegError(f"{args.output}: the summary must be a .json file")
    summary = evaluate(args.reference, args.prediction, args.output, None, args.overlays, args.images, args.progress,
                       dataset_json=args.dataset_json, overwrite=args.overwrite)
    for name, values in summary["mean"].items():
        print(f"{name:10s} Dice {values['dice']:.4f}  IoU {values['iou']:.4f}  HD95 {values['hd95']:.2f} mm  "
              f"ASSD {values['assd']:.3f} mm  avgHD max {values['avg_hausdorff_max']:.4f} / mean {values['avg_hausdorff_mean']:.4f} mm")
    print(f"wrote {args.output} and {args.output.with_suffix('.csv')}")
    return 0
