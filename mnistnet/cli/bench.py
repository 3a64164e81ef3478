"""``mnistnet bench``: the fast backend against the NumPy reference (and the peers)."""

from __future__ import annotations

import argparse
import json
import sys

from mnistnet.bench import DEFAULT_PRESETS, format_report, run_comparison
from mnistnet.cli.common import add_dataset
from mnistnet.presets import PRESETS

NAME = "bench"
HELP = "time the fast backend against the NumPy reference, preset by preset"
DESCRIPTION = ("Time the same training on the reference (NumPy) and fast (compiled) backends "
               "and compare. Run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for a fair "
               "NumPy baseline.")


def run(args: argparse.Namespace) -> int:
    """Run the comparison the parsed options ask for and print it. Raises ValueError on bad
    options (the CLI turns it into a one-line error)."""
    presets = [p for item in args.presets for p in item.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise ValueError(f"unknown preset(s) {', '.join(unknown) or '(none given)'}; choose "
                         f"from {', '.join(PRESETS)}")
    if args.epochs < 1 or args.repeats < 1:
        raise ValueError("--epochs and --repeats must be >= 1")
    result = run_comparison(presets, epochs=args.epochs, data=args.data,
                            repeats=args.repeats, peers=args.peers, gemm=args.gemm,
                            peers_python=args.peers_python, dataset=args.dataset or "mnist",
                            uint8=args.uint8)
    if args.json:
        message = result.get("peers", {}).get("message")
        if message:  # keep stdout valid JSON
            print(message, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
    return 0



def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `mnistnet bench` to `parser` (the CLI's subparser, or our own)."""
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        metavar="PRESET",
                        help=f"presets to compare, space- or comma-separated, of "
                        f"{', '.join(PRESETS)} (default: {' '.join(DEFAULT_PRESETS)})")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timing (default 1)")
    add_dataset(parser)
    parser.add_argument("--uint8", action="store_true",
                        help="also time each preset's fast epoch from uint8 images through "
                        "Rescaling(1/255) against float32, check the weights are the same, "
                        "and measure a fit's peak memory both ways, each in its own process")
    parser.add_argument("--repeats", type=int, default=1,
                        help="report the best of this many runs (default 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--peers", action="store_true",
                        help="also time PyTorch and Keras 3 on the same training, each in a "
                        "process of its own, if installed")
    parser.add_argument("--peers-python", metavar="PYTHON", default=None,
                        help="the interpreter that runs the peers (one with torch and/or "
                        "keras installed; default: this one)")
    parser.add_argument("--gemm", action="store_true",
                        help="also time the per-layer GEMMs of one batch-32 step")
    return parser
