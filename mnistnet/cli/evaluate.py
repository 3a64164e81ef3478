"""``mnistnet evaluate``: a saved model's loss and accuracy on the test set."""

from __future__ import annotations

import argparse

from mnistnet.cli.common import EXIT_OK, add_data_and_backend, load_data, load_model
from mnistnet.data import load_mnist_test

NAME = "evaluate"
HELP = "print a saved model's loss and accuracy on the test set"
DESCRIPTION = ("Load a model written by 'train --save' and print its mean loss and accuracy on "
               "the MNIST test set.")


def add_arguments(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``mnistnet evaluate``."""
    sub.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    add_data_and_backend(sub)
    return sub


def run(args: argparse.Namespace) -> int:
    """Print a saved model's loss and accuracy on the test set."""
    model = load_model(args.model, args.backend)
    x_test, y_test = load_data(load_mnist_test, args.data)
    scores = model.evaluate(x_test, y_test)
    print(f"loss: {scores['loss']:.4f} - accuracy: {scores['accuracy']:.4f}")
    return EXIT_OK
