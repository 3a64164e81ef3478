"""``mnistnet sweep``: the command-line front of mnistnet.sweep.

    mnistnet sweep --preset cross-entropy --grid lr=0.003,0.01,0.03 batch-size=32,128 \\
        seed=0,1,2 --epochs 5 --out sweep.csv [--scheduler tcp://HOST:8786] \\
        [--save-best best.npz] [--json] [--dataset NAME] [--data DIR] [--validation-split F]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mnistnet import datasets
from mnistnet import sweep as sweeping
from mnistnet.cli.common import (
    EXIT_INTERRUPTED,
    CLIError,
    check_output_path,
    dataset_name,
    fraction,
    positive_int,
)

NAME = "sweep"

HELP = "train every combination of a grid of settings, on a Dask cluster or this machine"
DESCRIPTION = (
    "Train every combination of the grid's values (the last key varying fastest), each run "
    "as 'mnistnet train' would train it, validated on the test set (or on --validation-split "
    "rows), and write one row per run to --out as it finishes: the settings, status, best "
    "(1 for the highest final val_accuracy), the final val_accuracy and val_loss, seconds, "
    "worker, threads, weights_sha256, data, then loss_E, accuracy_E, val_loss_E and "
    "val_accuracy_E of every epoch E. Runs go to a Dask LocalCluster of one single-threaded "
    "process per core (127.0.0.1 only), or to --scheduler. Rerunning with the same --out "
    "trains only the runs missing from it; Ctrl-C keeps every finished run. A run's weights "
    "are the same bits wherever it trains. Needs Dask: pip install \"mnistnet[dask]\" "
    "(not for --scheduler sequential).")
EPILOG = (
    "Grid keys: preset, layers (dense stacks UNITS:ACT,...; alternatives separated by '/', "
    "e.g. layers=128:relu,10:softmax/256:relu,10:softmax), optimizer (sgd, adam, adamw, "
    "rmsprop), lr, batch-size, epochs, seed. A setting the grid leaves out is the preset's "
    "(as 'mnistnet train'). Across machines: start 'dask scheduler' on one host and "
    "'dask worker tcp://HOST:8786' on each, then pass --scheduler tcp://HOST:8786.")



def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `mnistnet sweep` to `parser` (the CLI's subparser)."""
    arch = parser.add_mutually_exclusive_group()
    arch.add_argument("--preset", choices=tuple(sweeping.RECIPES),
                      help="the network of every run (unless the grid has a preset key)")
    arch.add_argument("--layers", metavar="UNITS:ACT,...",
                      help="a dense stack for every run, e.g. 128:relu,64:relu,10:softmax "
                           "(loss: cross-entropy after softmax, else mse)")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="the values to sweep, one KEY=VALUES per key, e.g. "
                             "lr=0.003,0.01,0.03 batch-size=32,128 seed=0,1,2")
    parser.add_argument("--epochs", type=positive_int, metavar="N",
                        help="epochs of every run, unless the grid has an epochs key "
                             "(default: the preset's, as 'mnistnet train')")
    parser.add_argument("--out", required=True, metavar="FILE.csv",
                        help="the results table (rerun with the same file to resume)")
    parser.add_argument("--json", action="store_true",
                        help="also write the table as JSON, beside --out (FILE.json)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="a Dask scheduler, tcp://HOST:8786, or 'sequential' (one run "
                             "after the other in this process, no Dask); default: a "
                             "LocalCluster")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="the LocalCluster's worker processes (default: one per core)")
    parser.add_argument("--timeout", type=_seconds, default=sweeping.CONNECT_TIMEOUT,
                        metavar="SECONDS",
                        help="how long --scheduler has to answer (default: %(default)g)")
    parser.add_argument("--dataset", metavar="NAME", type=dataset_name, default="mnist",
                        help=f"the images: {', '.join(datasets.NAMES)} (default: "
                             "%(default)s); a preset's output layer gets one unit per class")
    parser.add_argument("--data", metavar="DIR",
                        help="folder holding the dataset's four IDX files, read here and sent "
                             "to every worker once; default: $MNISTNET_DATA (MNIST) or "
                             "$MNISTNET_DATASETS/<dataset>, else the per-user cache, else "
                             "download")
    parser.add_argument("--data-on-workers", action="store_true",
                        help="each worker reads --data itself (a folder on the workers)")
    parser.add_argument("--validation-split", type=fraction, metavar="FRACTION",
                        help="validate on the last FRACTION of the training images instead "
                             "of the test set")
    parser.add_argument("--save-best", metavar="FILE.npz",
                        help="write the best run's model here")
    parser.add_argument("--quiet", action="store_true", help="no line per finished run")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def parse_grid(items: list[str]) -> dict[str, str]:
    """["lr=0.01,0.03", "seed=0,1"] -> {"lr": "0.01,0.03", "seed": "0,1"} (the values are
    split and checked by mnistnet.sweep)."""
    grid: dict[str, str] = {}
    for item in items:
        key, equals, values = item.partition("=")
        if not equals or not key.strip():
            raise CLIError(f"--grid {item!r}: expected KEY=VALUE,... (e.g. lr=0.01,0.03)")
        if key.strip() in grid:
            raise CLIError(f"--grid: key {key.strip()} is given twice")
        grid[key.strip()] = values
    return grid


def run(args: argparse.Namespace) -> int:
    """Run the sweep the parsed options describe; returns the exit code (0, or 130 after
    Ctrl-C). Errors are CLIError, or SweepError/OSError (one line from the CLI)."""
    grid = parse_grid(args.grid)
    json_out = Path(args.out).with_suffix(".json") if args.json else None
    if json_out is not None and json_out == Path(args.out):
        raise CLIError(f"--json writes {json_out} beside --out: give --out a .csv name")
    for option, path in (("--out", args.out), ("--json", json_out),
                         ("--save-best", args.save_best)):
        if path is not None:
            check_output_path(option, str(path))
    if args.workers is not None and args.scheduler is not None:
        raise CLIError("--workers sizes the LocalCluster: not with --scheduler")
    if args.data_on_workers and args.data is None:
        raise CLIError("--data-on-workers needs --data DIR (a folder on every worker)")
    try:
        sweeping.sweep(grid, out=args.out, preset=args.preset, layers=args.layers,
                       epochs=args.epochs, data=args.data, dataset=args.dataset,
                       data_on_workers=args.data_on_workers,
                       validation_split=args.validation_split, scheduler=args.scheduler,
                       n_workers=args.workers, save_best=args.save_best, json_out=json_out,
                       progress=not args.quiet, timeout=args.timeout)
    except KeyboardInterrupt:
        print(f"mnistnet: interrupted; {args.out} holds every finished run (rerun the same "
              "command to train the rest)", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if args.save_best is not None and not args.quiet:
        print(f"saved the best run's model to {args.save_best}", flush=True)
    return 0
