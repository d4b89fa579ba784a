"""kneeseg_synth: write a synthetic low-field knee phantom dataset (the embedded default data)."""

from __future__ import annotations

from pathlib import Path

from kneeseg.cli.common import parser, positive_float, positive_int
from kneeseg.dataset.phantom import PhantomOptions, synthesize_dataset
from kneeseg.errors import KneesegError, cli_entry


@cli_entry("kneeseg_synth")
def main(argv=None):
    p = parser("kneeseg_synth", __doc__)
    p.add_argument("-o", "--output", required=True, help="dataset folder to create, e.g. kneeseg_data/raw/Dataset900_KneePhantom")
    p.add_argument("-n", "--num-cases", type=positive_int, default=4, help="training cases (default 4)")
    p.add_argument("--num-test", type=int, default=0, help="held-out cases written to imagesTs/labelsTs (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=positive_int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=positive_float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("Z", "Y", "X"), help="mm")
    p.add_argument("--snr", type=positive_float, default=15.0, help="marrow signal / noise sigma (default 15)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = p.parse_args(argv)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise KneesegError(f"{out}: exists and is not a folder; give a folder for the dataset")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise KneesegError(f"{out}: already exists and is not empty (use --overwrite)")
    if args.num_test < 0:
        raise KneesegError(f"--num-test {args.num_test}: must be 0 or more")
    options = PhantomOptions(shape=tuple(args.shape), spacing=tuple(args.spacing), snr=args.snr)
    synthesize_dataset(out, args.num_cases, args.seed, options, args.num_test)
    print(f"wrote {args.num_cases} training case(s) and {args.num_test} test case(s) to {out}")
    return 0
