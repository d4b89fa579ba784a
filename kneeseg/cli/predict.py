"""kneeseg_predict -i IN -o OUT: bones from scans, with the input's geometry and format.

IN is an image file, a folder of CASE_0000.<ext> files (of any image files, for a one-channel
model), a DICOM series folder, or a folder tree of DICOM series (one output per series, NIfTI).
-o CASE.seg.nrrd writes a 3D Slicer segmentation (named, coloured bones); --output-type dicom-seg (or
-o CASE.dcm), for DICOM series, a DICOM SEG referencing its slices; plain label maps get an ITK-SNAP
label description and a Slicer colour table beside them. A folder run records its cases in
study.csv and, run again, skips those made by the same model with the same options (--overwrite:
redo); --num-parts/--part-id share it between processes or machines (so does torchrun:
torchrun --nproc_per_node 4 -m kneeseg.cli.predict ...); one run writes into a folder at a time.
A file kneeseg has no record of making (a hand-drawn label map, an existing -o FILE) is never
replaced without --overwrite; every output is checked before the model is loaded.
With no -d/-c/-f it uses the one trained dataset in the results folder, the configuration the
plans recommend for the device, and every fold trained so far; -m takes a model folder copied
elsewhere. Default when the results folder holds no trained model and no -m, -d, -c or -tr is
given: the built-in model (femur, tibia, patella in 0.3 T knee MRI; -m builtin names it; see
its MODEL_CARD.md), announced on stderr. Post-processing chosen by kneeseg_find_postprocessing is
applied unless --no-postprocessing. Each scan gets QC warnings on stderr when its bones look wrong.
A scan the model is unsure of is read again inverted and, where the model has a second reader (the
built-in model's any-contrast model; --second-reader MODEL for others), by that one: both say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kneeseg.api import predict
from kneeseg.cli.common import add_path_flags, parser, paths_from, positive_int
from kneeseg.errors import KneesegError, cli_entry
from kneeseg.hardware import resolve_device
from kneeseg.inference.study import PredictionOptions, StudyOptions


@cli_entry("kneeseg_predict")
def main(argv=None):
    p = parser("kneeseg_predict", __doc__)
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True, help="output file (single input) or folder")
    p.add_argument("-d", "--dataset")
    p.add_argument("-c", "--configuration")
    p.add_argument("-tr", "--trainer", help="trainer whose model to use (default: the one trained)")
    p.add_argument("-f", "--folds", nargs="+", help="folds to ensemble (default: all trained)")
    p.add_argument("-m", "--model-dir", type=Path, help="trained model folder (plans.json, dataset.json, fold_*/), "
                   "or 'builtin' for the model that ships with kneeseg ('builtin-any-contrast': its second reader)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=["mirror", "none"], default="mirror", help="test-time mirroring (default mirror)")
    p.add_argument("--tta-scales", type=float, nargs="+", default=[1.0], metavar="F",
                   help="also predict at these multiples of the planned spacing (0.75-1.3) and average, e.g. "
                        "0.8 0.9 1.0 1.1 (one sliding window each: slower; default 1.0)")
    p.add_argument("--step", type=float, default=0.5, help="tile step as a fraction of the patch (default 0.5)")
    p.add_argument("--autocast", choices=["none", "bf16", "fp16"], help="mixed precision for inference")
    air = p.add_mutually_exclusive_group()
    air.add_argument("--zero-air", action="store_true", default=None,
                     help="always store the scan's air (dark voxels connected to the border) as zeros before predicting; "
                          "by default this is done when the model was trained on scans whose air was zeros and the "
                          "scan's is noise")
    air.add_argument("--keep-air", dest="zero_air", action="store_false", help="never store the air as zeros")
    p.set_defaults(zero_air=None)
    p.add_argument("--no-postprocessing", dest="postprocess", action="store_false")
    p.add_argument("--no-inverted-retry", dest="inverted_retry", action="store_false",
                   help="do not read a scan the model is unsure of a second time with its contrast inverted")
    p.add_argument("--no-taught-contrast", dest="teach_contrast", action="store_false",
                   help="the second reader reads alone: it does not teach the model the scan's contrast (faster, "
                        "coarser; see docs/prediction.md)")
    p.add_argument("--second-reader", metavar="MODEL", default="auto",
                   help="a model folder of the same labels that reads a scan the model is unsure of as recorded and inverted "
                        "(a contrast it cannot read), 'builtin-any-contrast' (the built-in model's, e.g. for a model "
                        "fine-tuned from it), or 'none' (default: the built-in model's any-contrast model when "
                        "predicting with the built-in model; none for other models)")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz with class probabilities")
    p.add_argument("--overlays", type=Path, help="folder for QC PNGs (three planes with contours)")
    p.add_argument("--statistics", action="store_true",
                   help="also write CASE.statistics.json per scan (bone volumes in mm3 and ml, connected components, "
                        "bounding box in scanner LPS mm, surface area with --stl) and, for a folder, statistics.csv")
    p.add_argument("--output-type", choices=["label-map", "dicom-seg"], default="label-map",
                   help="dicom-seg: a DICOM SEG per DICOM series input (CASE.dcm), for a PACS (default: a label map "
                        "in the input's format, NIfTI for DICOM)")
    p.add_argument("--overwrite", action="store_true", help="redo every case of a folder run (default: skip the cases "
                   "study.csv records as made by this model with these options), and replace files kneeseg has no record "
                   "of making (default: refused, e.g. a hand-drawn label map or an existing -o FILE)")
    p.add_argument("--num-parts", type=positive_int, help="share a study: predict every N-th case "
                   "(default: torchrun's WORLD_SIZE, else 1)")
    p.add_argument("--part-id", type=int, help="which part, 0..N-1 (default: torchrun's RANK, else 0)")
    p.add_argument("--stl", type=Path, metavar="DIR", help="also write checked STL bones (scanner LPS mm): DIR/<bone>.stl "
                   "for -o FILE, DIR/<case>/<bone>.stl for -o FOLDER")
    p.add_argument("--stl-faces", type=int, metavar="N", help="with --stl: at most N triangles per bone")
    p.add_argument("--timings", action="store_true", help="print where each case's time went (read, preprocess, network, "
                   "to the scan's grid, post-processing, write, ...) on stderr")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_path_flags(p)
    args = p.parse_args(argv)
    num_parts, part_id, device = args.num_parts, args.part_id, args.device
    if (num_parts is None) != (part_id is None):
        raise KneesegError("--num-parts and --part-id go together (under torchrun give neither: WORLD_SIZE and RANK are used)")
    if "WORLD_SIZE" in os.environ and num_parts is None:  # under torchrun: one part per process
        num_parts, part_id = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", 0))
        if device in ("cuda", "auto") and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    options = PredictionOptions(device=resolve_device(device), tta=args.tta == "mirror", tta_scales=tuple(args.tta_scales),
                                step=args.step, autocast=args.autocast, postprocess=args.postprocess, zero_air=args.zero_air,
                                save_probabilities=args.save_probabilities, progress=args.progress,
                                inverted_retry=args.inverted_retry, second_reader=args.second_reader,
                                teach_contrast=args.teach_contrast, timings=args.timings)
    study = StudyOptions(output_type=args.output_type, statistics=args.statistics, overlays=args.overlays, stl=args.stl,
                         stl_faces=args.stl_faces, overwrite=args.overwrite, num_parts=num_parts or 1, part_id=part_id or 0)
    outputs = predict(Path(args.input), Path(args.output), paths_from(args), args.model_dir, dataset=args.dataset,
                      configuration=args.configuration, folds=args.folds, trainer=args.trainer, options=options, study=study)
    for path in outputs:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
