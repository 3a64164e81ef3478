"""``mnistnet plot``: pictures of what a saved model learned, or of a training history."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistnet import plot
from mnistnet.cli.common import (
    add_backend,
    add_dataset,
    check_fits,
    dataset_for,
    load_model,
    load_test_split,
    name_classes,
)
from mnistnet.export import check_output_folder
from mnistnet.model import Model

NAME = "plot"
HELP = ("draw a model's first-layer weights, confusion matrix and mistakes, or a training "
        "history")
DESCRIPTION = ("Draw what a saved model learned (its first layer's weights), its confusion "
               "matrix and its most confident mistakes on the test set of its dataset (the "
               "one it was trained on, else MNIST; --dataset names another), labelled with "
               "its class names, and/or the learning curves of a 'train --history' file; one "
               "picture file each, in --out.")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``mnistnet plot`` to ``parser`` (the CLI's subparser)."""
    parser.add_argument("model", metavar="MODEL.npz", nargs="?",
                        help="a model written by 'train --save'")
    parser.add_argument("--what", choices=(*plot.PICTURES, "all"), default=None,
                        help="which pictures of the model (default: all)")
    parser.add_argument("--history", metavar="FILE.json",
                        help="also draw the learning curves of 'train --history FILE.json', "
                             "beside the tutorial's for its presets")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="folder for the pictures (made if missing)")
    add_dataset(parser, default="the model's, else mnist")
    parser.add_argument("--format", choices=plot.FORMATS, default="png",
                        help="picture format (default: %(default)s)")
    add_backend(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Draw the pictures the parsed options ask for and print each file's path."""
    if args.model is None and args.history is None:
        raise ValueError("give a MODEL.npz, --history FILE.json, or both")
    if args.what is not None and args.model is None:
        raise ValueError("--what draws a model: give a MODEL.npz")
    try:
        plot._new_figure(1, 1)
    except ImportError as exc:  # before any work; the CLI reports ValueError in one line
        raise ValueError(str(exc)) from None
    out = _output_folder(args.out)
    figures = {}
    if args.model is not None:
        model = load_model(args.model, args.backend)
        figures.update(_model_figures(model, args.what or "all", args))
    if args.history is not None:
        figures["history"] = plot.history(args.history)
    out.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        print(plot.save(figure, out / f"{name}.{args.format}"), flush=True)
    return 0


def _model_figures(model: Model, what: str, args: argparse.Namespace) -> dict[str, object]:
    names = plot.PICTURES if what == "all" else (what,)
    figures = {}
    dataset = dataset_for(args, model)
    if args.dataset is not None or "confusion" in names or "mistakes" in names:
        check_fits(model, dataset)
        if not model.class_names_given:  # an older file: its dataset's names
            name_classes(model, dataset)
    if "weights" in names:
        figures["weights"] = plot.weights(model)
    if "confusion" in names or "mistakes" in names:
        x_test, y_test = load_test_split(dataset, args.data, pixels=model.plan.takes_pixels)
        if "confusion" in names:
            figures["confusion"] = plot.confusion(model, x_test, y_test)
        if "mistakes" in names:
            figures["mistakes"] = plot.mistakes(model, x_test, y_test)
    return figures


def _output_folder(text: str) -> Path:
    """--out as a Path, checked before any work: an existing folder, or one that can be made
    with its missing parents (when the pictures are written), as `mnistnet export` does."""
    if not text:
        raise ValueError("--out: empty folder name")
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {text}: exists and is not a folder")
    try:
        return check_output_folder(folder, f"--out {text}")
    except NotADirectoryError as exc:  # the CLI reports ValueError in one line
        raise ValueError(str(exc)) from None
