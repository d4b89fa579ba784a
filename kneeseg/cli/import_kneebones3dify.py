"""kneeseg_import_kneebones3dify: import the KneeBones3Dify scan and bone mask as a raw dataset.

SOURCE is the Zenodo download folder (Data/ DICOM series + GT-Masks/Mask_NNN.png, paired by
DICOM InstanceNumber) or a scan file given together with --mask (any SimpleITK format). The binary
mask is split into femur (1), tibia (2) and patella (3) by connected components and anatomy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kneeseg.cli.common import add_path_flags, parser, paths_from
from kneeseg.dataset.kneebones3dify import import_kneebones3dify
from kneeseg.errors import cli_entry


@cli_entry("kneeseg_import_kneebones3dify")
def main(argv=None):
    p = parser("kneeseg_import_kneebones3dify", __doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="Zenodo folder (Data/ + GT-Masks/) or scan file")
    p.add_argument("--mask", help="binary bone mask file (with a scan file as SOURCE)")
    p.add_argument("-d", "--dataset-id", type=int, default=901, help="dataset number (default 901)")
    p.add_argument("--name", default="KneeBones3Dify", help="dataset name (default KneeBones3Dify)")
    p.add_argument("--case-id", default="knee", help="case identifier (default knee)")
    p.add_argument("--binary", action="store_true", help="keep one 'bone' label instead of femur/tibia/patella")
    p.add_argument("--half", choices=["A", "B"], help="keep half A (image columns < 256) or B (>= 256) of the scan")
    add_path_flags(p)
    args = p.parse_args(argv)
    paths = paths_from(args)
    result = import_kneebones3dify(
        Path(args.source), paths.raw, Path(args.mask) if args.mask else None,
        args.dataset_id, args.name, args.case_id, args.binary, args.half,
    )
    for line in result.report:
        print(line)
    print(f"wrote {result.dataset_dir}")
    return 0
