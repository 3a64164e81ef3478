"""``mnistnet bench``: the fast backend against the NumPy reference (and the peers), short
epochs, predict against onnxruntime, epochs under load, and the time to an accuracy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mnistnet.bench import DEFAULT_PRESETS, format_report, run_comparison
from mnistnet.cli.common import add_dataset, number, positive_int
from mnistnet.presets import PRESETS
from mnistnet.time_to_accuracy import (
    DEFAULT_SEEDS,
    default_presets,
    format_time_to_report,
    parse_seeds,
    time_to_accuracy,
)

NAME = "bench"
HELP = "time the fast backend against the NumPy reference, preset by preset"
DESCRIPTION = ("Time the same training on the reference (NumPy) and fast (compiled) backends "
               "and compare, every GFLOP/s figure as a share of the FMA peak the run "
               "measures; optionally short epochs, predict against onnxruntime, epochs "
               "with one core busy, and the peers. With --time-to, time each preset's recipe "
               "until the test accuracy reaches a target instead. Run with OPENBLAS_CORETYPE "
               "and OPENBLAS_L2_SIZE unset for a fair NumPy baseline.")
# Options of the epoch comparison that mean nothing to --time-to.
COMPARISON_ONLY = ("epochs", "repeats", "gemm", "subset", "predict", "busy_core",
                   "skip_comparison", "uint8")
TIME_TO_ONLY = ("seeds", "full_recipe")


def run(args: argparse.Namespace) -> int:
    """Run the comparison (or, with --time-to, the time to accuracy) the parsed options ask
    for and print it. Raises ValueError on bad options (the CLI turns it into a one-line
    error)."""
    time_to = args.time_to is not None
    _refuse_options(args, COMPARISON_ONLY if time_to else TIME_TO_ONLY,
                    "--time-to" if time_to else "without --time-to")
    presets = _presets(args, default_presets() if time_to else list(DEFAULT_PRESETS))
    result = _time_to(args, presets) if time_to else _comparison(args, presets)
    if args.json:
        message = (result.get("peers") or {}).get("message")
        if message:  # keep stdout valid JSON
            print(message, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(format_time_to_report(result) if time_to else format_report(result))
    return 0


def _refuse_options(args: argparse.Namespace, names: tuple[str, ...], context: str) -> None:
    given = [f"--{name.replace('_', '-')}" for name in names
             if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} cannot be used {context}")


def _presets(args: argparse.Namespace, default: list[str]) -> list[str]:
    if args.presets is None:
        return default
    presets = [p for item in args.presets for p in item.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise ValueError(f"unknown preset(s) {', '.join(unknown) or '(none given)'}; choose "
                         f"from {', '.join(PRESETS)}")
    return presets


def _comparison(args: argparse.Namespace, presets: list[str]) -> dict[str, Any]:
    compare = not args.skip_comparison
    if not compare and not (args.subset or args.predict or args.busy_core or args.gemm
                            or args.uint8):
        raise ValueError("--skip-comparison leaves nothing to run: add --subset, --predict, "
                         "--busy-core, --gemm or --uint8")
    if args.peers and not compare:
        raise ValueError("--peers compares with the fast epochs: drop --skip-comparison")
    return run_comparison(presets, epochs=args.epochs or 1, data=args.data,
                          repeats=args.repeats or 1, peers=args.peers, gemm=args.gemm,
                          peers_python=args.peers_python, subset=args.subset,
                          predict=args.predict, busy_core=args.busy_core, compare=compare,
                          dataset=args.dataset or "mnist", uint8=args.uint8)


def _time_to(args: argparse.Namespace, presets: list[str]) -> dict[str, Any]:
    seeds = parse_seeds(args.seeds) if args.seeds else DEFAULT_SEEDS
    return time_to_accuracy(args.time_to, presets, seeds, data=args.data, peers=args.peers,
                            peers_python=args.peers_python, full_recipe=args.full_recipe,
                            dataset=args.dataset or "mnist")


def accuracy(text: str) -> float:
    """A target accuracy, in (0, 1]."""
    value = number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `mnistnet bench` to `parser` (the CLI's subparser, or our own)."""
    parser.add_argument("--presets", nargs="+", default=None, metavar="PRESET",
                        help=f"presets to time, space- or comma-separated, of "
                        f"{', '.join(PRESETS)} (default: {' '.join(DEFAULT_PRESETS)}; with "
                        f"--time-to: {' '.join(default_presets())})")
    add_dataset(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--peers", action="store_true",
                        help="also time PyTorch and Keras 3 on the same training, each in a "
                        "process of its own, if installed")
    parser.add_argument("--peers-python", metavar="PYTHON", default=None,
                        help="the interpreter that runs the peers (one with torch and/or "
                        "keras installed; default: this one)")
    comparison = parser.add_argument_group("the epoch comparison (without --time-to)")
    comparison.add_argument("--epochs", type=positive_int, default=None,
                            help="epochs per timing (default 1)")
    comparison.add_argument("--repeats", type=positive_int, default=None,
                            help="report the best of this many runs (default 1)")
    comparison.add_argument("--gemm", action="store_true",
                            help="also time the per-layer GEMMs of one batch-32 step")
    comparison.add_argument("--subset", type=positive_int, default=None, metavar="N",
                            help="also time a fast epoch on the first N training rows "
                            "against one on all, per image (no validation in either)")
    comparison.add_argument("--predict", action="store_true",
                            help="also time model.predict on 10,000 rows and on one image "
                            "against the exported model in onnxruntime, in this process "
                            "(needs mnistnet[onnx] and onnxruntime)")
    comparison.add_argument("--busy-core", action="store_true",
                            help="also time fast epochs on all threads and on one while a "
                            "busy loop runs in a child process (all rows, and the --subset "
                            "rows if given)")
    comparison.add_argument("--uint8", action="store_true",
                            help="also time each preset's fast epoch from uint8 images "
                            "through Rescaling(1/255) against float32, check the weights are "
                            "the same, and measure a fit's peak memory both ways, each in its "
                            "own process")
    comparison.add_argument("--skip-comparison", action="store_true",
                            help="skip the reference-vs-fast epochs: run only --subset, "
                            "--predict, --busy-core, --gemm and --uint8")
    time_to = parser.add_argument_group("the time to an accuracy")
    time_to.add_argument("--time-to", type=accuracy, default=None, metavar="ACCURACY",
                         help="train each preset's recipe and time fit until the test "
                         "accuracy, checked after every epoch, first reaches ACCURACY "
                         "(evaluation excluded); e.g. 0.992")
    time_to.add_argument("--seeds", default=None, metavar="SEEDS",
                         help="seeds for --time-to, as 0,1,2 or 0-9 (default 0,1,2); every "
                         "seed is reported")
    time_to.add_argument("--full-recipe", action="store_true",
                         help="with --time-to, train every epoch of the recipe instead of "
                         "stopping at the target (the accuracy after each is reported)")
    return parser
