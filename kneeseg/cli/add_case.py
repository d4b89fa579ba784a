"""kneeseg_add_case: a corrected scan into a raw dataset as a training case, for fine-tuning.

The scan is any image file kneeseg reads or a DICOM series folder (one --image per channel). The
label is the corrected prediction: a 3D Slicer segmentation (.seg.nrrd; segments matched to the
dataset's labels by name, in any case), a DICOM SEG (segments matched by their label, frames placed
by their positions) or a label map; it must lie on the scan's grid. A dataset that does not exist
is created with the labels of the model whose predictions were corrected (-m, default the built-in
model). Nothing is half-added: on any error the dataset stays as it was.
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.api import add_case
from kneeseg.cli.common import add_path_flags, parser, paths_from
from kneeseg.errors import cli_entry


@cli_entry("kneeseg_add_case")
def main(argv=None):
    p = parser("kneeseg_add_case", __doc__)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name; a number not yet used creates DatasetNNN_NAME")
    p.add_argument("--image", required=True, nargs="+", type=Path, help="the scan: a file or DICOM series folder per channel")
    p.add_argument("--label", required=True, type=Path, help="its corrected label: .seg.nrrd, DICOM SEG (.dcm) or label map")
    p.add_argument("--case", dest="case_id", help="case id (default: the next free case_NNN)")
    p.add_argument("--name", help="name of a dataset this command creates (default MyScanner)")
    p.add_argument("-m", "--model-dir", help="model whose labels a new dataset takes: a model folder or 'builtin' (default)")
    p.add_argument("--overwrite", action="store_true", help="replace a case of the same id")
    add_path_flags(p)
    args = p.parse_args(argv)
    added = add_case(paths_from(args), args.dataset, args.image, args.label, args.model_dir, args.name, args.case_id, args.overwrite)
    if added.created:
        print(f"created {added.dataset_dir} with the labels of {args.model_dir or 'builtin'}")
    voxels = ", ".join(f"{name} {count}" for name, count in added.voxels.items())
    print(f"added {added.case_id} ({voxels} voxels): {', '.join(str(p) for p in added.images)}, {added.label}; "
          f"{added.num_training} training case(s) in {added.dataset_dir.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
