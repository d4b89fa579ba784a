"""kneeseg_export_stl SEG -o DIR: one watertight, smoothed STL per bone, in scanner LPS millimetres.

Each mesh is checked with an independent library (trimesh): every edge shared by exactly two
triangles, watertight, consistent winding, positive volume, one shell per piece; repaired where
needed, and a bone that stays unprintable is named on stderr. Stray pieces (under 1% of the largest)
are left out and reported. 3D Slicer reads the files as LPS by default: they lie on the scan.
An STL file in DIR that kneeseg did not write is not replaced without --overwrite.
"""

from __future__ import annotations

from pathlib import Path

from kneeseg.api import export_stl
from kneeseg.cli.common import parser
from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError, cli_entry


@cli_entry("kneeseg_export_stl")
def main(argv=None):
    p = parser("kneeseg_export_stl", __doc__)
    p.add_argument("segmentation", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for <bone>.stl")
    p.add_argument("--dataset-json", type=Path, help="take bone names and label values from this dataset.json "
                   "(default: femur 1, tibia 2, patella 3)")
    p.add_argument("--smoothing-iterations", type=int, default=20, help="Taubin smoothing passes (default 20; 0: none)")
    p.add_argument("--stl-faces", type=int, metavar="N", help="decimate to at most N triangles per bone")
    p.add_argument("--overwrite", action="store_true", help="replace <bone>.stl files kneeseg did not write (default: refused)")
    args = p.parse_args(argv)
    if args.smoothing_iterations < 0:
        raise KneesegError(f"--smoothing-iterations {args.smoothing_iterations}: must be 0 or more")
    labels = DatasetJson.load(args.dataset_json).foreground if args.dataset_json else None
    for r in export_stl(args.segmentation, args.output, labels, smoothing_iterations=args.smoothing_iterations,
                        max_faces=args.stl_faces, overwrite=args.overwrite):
        check = "checked printable" if r.printable else f"NOT PRINTABLE: {'; '.join(r.problems)}"
        print(f"{r.label:8s} {r.path}  {r.faces} triangles, mesh {r.mesh_volume_mm3:.0f} mm3 vs voxels "
              f"{r.voxel_volume_mm3:.0f} mm3 ({100 * (r.volume_ratio - 1):+.1f}%), {check}")
    return 0
