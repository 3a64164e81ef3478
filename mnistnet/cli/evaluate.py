"""``mnistnet evaluate``: a saved model's loss and accuracy on a test set."""

from __future__ import annotations

import argparse

from mnistnet.cli.common import (
    EXIT_OK,
    add_data_and_backend,
    check_fits,
    dataset_for,
    load_model,
    load_test_split,
)

NAME = "evaluate"
HELP = "print a saved model's loss and accuracy on the test set"
DESCRIPTION = ("Load a model written by 'train --save' and print its mean loss and accuracy on "
               "the test set of its dataset (the one it was trained on, else MNIST; "
               "--dataset names another).")


def add_arguments(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``mnistnet evaluate``."""
    sub.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    add_data_and_backend(sub, default_dataset="the model's, else mnist")
    return sub


def run(args: argparse.Namespace) -> int:
    """Print a saved model's loss and accuracy on the test set."""
    model = load_model(args.model, args.backend)
    name = dataset_for(args, model)
    check_fits(model, name)
    x_test, y_test = load_test_split(name, args.data, pixels=model.plan.takes_pixels)
    scores = model.evaluate(x_test, y_test)
    print(f"loss: {scores['loss']:.4f} - accuracy: {scores['accuracy']:.4f}")
    return EXIT_OK
