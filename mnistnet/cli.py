"""The ``mnistnet`` command (also ``python -m mnistnet``): train, evaluate, predict, info.

    mnistnet train --preset cross-entropy --epochs 20 --save model.npz
    mnistnet train --preset convnet --epochs 5 --checkpoint ckpt.npz --save model.npz
    mnistnet train --resume model.npz --epochs 5 --save model.npz
    mnistnet evaluate model.npz
    mnistnet predict model.npz digit.pgm more.npy t10k-images-idx3-ubyte.gz
    mnistnet plot model.npz --out pictures
    mnistnet export model.npz --onnx model.onnx --c firmware/ --name digits
    mnistnet demo model.npz

Exit codes: 0 success; 2 bad arguments or any other error a user can cause (missing or
corrupt files, unknown names, ...), reported as one line ``mnistnet: error: ...`` on stderr;
3 training diverged (the loss became NaN or Inf); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

import mnistnet as mn
from mnistnet import _sweep_cli, bench, demo, export, plot
from mnistnet.callbacks import Callback, EarlyStopping, ModelCheckpoint
from mnistnet.data import DownloadError, load_mnist_test, read_idx
from mnistnet.layers import Conv2D, Dense, Layer, MaxPool2D, RandomTranslation
from mnistnet.model import ACTIVATIONS, BACKENDS, LOSSES, PRESETS, RECIPES
from mnistnet.optimizers import Optimizer
from mnistnet.schedules import (
    CosineDecay,
    ExponentialDecay,
    LearningRateSchedule,
    OneCycle,
    PiecewiseConstantDecay,
)

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

PROG = "mnistnet"
DEFAULT_PRESET_EPOCHS = 30
PGM_MAX_HEADER = 4096  # bytes; a P5 header is a few dozen bytes plus optional comments
_PGM_WHITESPACE = b" \t\n\r\v\f"
_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive

# Errors the library (and the file system) raise for things a user can get wrong.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, EOFError)


class CLIError(Exception):
    """An error to report as one line ``mnistnet: error: <message>`` (exit code 2)."""


class TrainingDiverged(Exception):
    """The loss became NaN or Inf during training (exit code 3); ``history`` holds the epochs
    completed before that."""

    def __init__(self, message: str, history: mn.History) -> None:
        super().__init__(message)
        self.history = history


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, raised as CLIError."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _learning_rate(text: str) -> float:
    value = _float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value


def _l2(text: str) -> float:
    value = _float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


SCHEDULE_GRAMMAR = ("cosine[:WARMUP_EPOCHS], exponential:RATE[:EVERY_EPOCHS], "
                    "piecewise:EPOCH=LR[,EPOCH=LR...], onecycle")


def _schedule_spec(text: str) -> tuple[str, list[str]]:
    """Check the form of a --schedule value now; the schedule is built once the number of
    steps is known (_schedule)."""
    kind, _, rest = text.partition(":")
    fields = rest.split(":") if rest else []
    shapes = {"cosine": (0, 1), "exponential": (1, 2), "piecewise": (1, 1), "onecycle": (0, 0)}
    if kind not in shapes or not shapes[kind][0] <= len(fields) <= shapes[kind][1]:
        raise argparse.ArgumentTypeError(f"expected {SCHEDULE_GRAMMAR}, got {text!r}")
    return kind, fields


def _momentum(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text!r}")
    return value


LAYERS_GRAMMAR = ("UNITS:ACT (dense), conv:FILTERS:KERNEL[:ACT][:stride=S][:padding=same], "
                  "pool:SIZE[:stride=S][:padding=same], flatten, dropout:RATE, bn "
                  "(BatchNormalization), act:ACT (an Activation layer), translate:FRACTION "
                  "(RandomTranslation); KERNEL, SIZE and S an int or HxW")


def _layers(text: str) -> list[Layer]:
    """Parse "conv:32:3:relu,pool:2,flatten,dropout:0.5,10:softmax" into layers (the library
    validates the values; see LAYERS_GRAMMAR)."""
    layers = []
    for item in text.split(","):
        item = item.strip()
        try:
            layers.append(_layer(item))
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from None
    return layers


def _layer(item: str) -> Layer:
    kind, *fields = [f.strip() for f in item.split(":")]
    options = dict(f.split("=", 1) for f in fields if "=" in f)
    fields = [f for f in fields if "=" not in f]
    if kind.isdigit() or kind.lstrip("+-").isdigit():  # UNITS:ACT, the dense layer
        if len(fields) != 1 or not fields[0] or options:
            raise ValueError(f"expected {LAYERS_GRAMMAR}")
        return mn.Dense(int(kind), activation=fields[0])
    if kind == "conv" and len(fields) in (2, 3):
        return mn.Conv2D(_int(fields[0]), _size(fields[1]), activation=_get(fields, 2, "linear"),
                         **_window_options(options))
    if kind == "pool" and len(fields) == 1:
        return mn.MaxPool2D(_size(fields[0]), **_window_options(options))
    if kind == "flatten" and not fields and not options:
        return mn.Flatten()
    if kind == "bn" and not fields and not options:
        return mn.BatchNormalization()
    if kind == "act" and len(fields) == 1 and not options:
        return mn.Activation(fields[0])
    if kind == "translate" and len(fields) == 1 and not options:
        try:
            return mn.RandomTranslation(float(fields[0]), float(fields[0]))
        except ValueError:
            raise ValueError(f"translate takes a fraction in [0, 1], got {fields[0]!r}") from None
    if kind == "dropout" and len(fields) == 1 and not options:
        try:
            return mn.Dropout(float(fields[0]))
        except ValueError:
            raise ValueError(
                f"dropout rate must be a number in [0, 1), got {fields[0]!r}") from None
    raise ValueError(f"expected {LAYERS_GRAMMAR}")


def _get(fields: list[str], i: int, default: str) -> str:
    return fields[i] if len(fields) > i else default


def _size(text: str) -> int | tuple[int, int]:
    """"3" or "3x5"."""
    if "x" in text:
        h, _, w = text.partition("x")
        return _int(h), _int(w)
    return _int(text)


def _window_options(options: dict[str, str]) -> dict[str, Any]:
    unknown = set(options) - {"stride", "padding"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (stride=S, padding=valid|same)")
    out: dict[str, Any] = {}
    if "stride" in options:
        out["strides"] = _size(options["stride"])
    if "padding" in options:
        out["padding"] = options["padding"]
    return out


# --------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mnistnet`` command and its subcommands."""
    parser = _Parser(
        prog=PROG, allow_abbrev=False,
        description="Train and run small dense neural networks on MNIST-style images.",
        epilog="Exit codes: 0 success, 2 error (bad arguments, missing or corrupt files), "
               "3 training diverged, 130 interrupted (Ctrl-C). Data is looked for in --data, "
               "else $MNISTNET_DATA, else the per-user cache, else downloaded there.")
    parser.add_argument("--version", action="version", version=f"{PROG} {mn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    bench.add_arguments(commands.add_parser(
        "bench", help="time the fast backend against the NumPy reference, preset by preset",
        description=bench.DESCRIPTION))
    export.add_arguments(commands.add_parser("export", help=export.HELP,
                                             description=export.DESCRIPTION))
    plot.add_arguments(commands.add_parser(
        "plot", help="draw a model's first-layer weights, confusion matrix and mistakes, or "
                     "a training history", description=plot.DESCRIPTION))
    demo.add_arguments(commands.add_parser(
        "demo", help="serve a page to draw digits on and watch the model read them",
        description=demo.DESCRIPTION))
    _sweep_cli.add_arguments(commands.add_parser("sweep", help=_sweep_cli.HELP,
                                                 description=_sweep_cli.DESCRIPTION))
    commands.add_parser("info", help="show the version, SIMD code path and thread settings",
                        description="Show the version, the compiled SIMD code path and the "
                                    "OpenMP thread settings (mnistnet.show_config()).")
    return parser


def _add_data_and_backend(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data", metavar="DIR",
                     help="folder holding the four MNIST IDX files (raw or .gz); default: "
                          "$MNISTNET_DATA, else the per-user cache, else download")
    sub.add_argument("--backend", choices=tuple(BACKENDS), default="fast",
                     help="compiled kernels or their NumPy twin (default: %(default)s)")


def _add_train(commands: Any) -> None:
    sub = commands.add_parser(
        "train", help="train a network on MNIST and report its test accuracy",
        description="Train a network by minibatch gradient descent, validating on the test "
                    "set after every epoch (Keras-style log), then print the final test "
                    "accuracy. "
                    "Ctrl-C stops between two steps; with --save the weights so far are kept, "
                    "and a --checkpoint file keeps the last completed epoch.")
    arch = sub.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", choices=tuple(PRESETS),
                      help="one of the tutorial's networks: perceptron (784-10 sigmoid, MSE), "
                           "hidden-relu (784-128-64-10, relu/sigmoid, MSE), cross-entropy "
                           "(the same with softmax and categorical cross-entropy); convnet "
                           "(Keras' simple MNIST convnet, trained with Adam 0.001, batch 128, "
                           "15 epochs); or convnet-plus (the convnet with BatchNormalization, "
                           "RandomTranslation and a one-cycle schedule)")
    arch.add_argument("--layers", type=_layers, metavar="LAYER,...",
                      help="a custom stack, input side first, e.g. 128:relu,64:relu,10:softmax "
                           "or conv:32:3:relu,pool:2,flatten,dropout:0.5,10:softmax; "
                           f"{LAYERS_GRAMMAR}; activations: {', '.join(ACTIVATIONS)}")
    arch.add_argument("--resume", metavar="MODEL.npz",
                      help="continue training a model written by --save or --checkpoint: "
                           "its architecture, optimizer state and position (the next "
                           "epoch's shuffle and masks), so that 5 epochs, then 5 more, give "
                           "the same weights as 10 straight; needs --epochs (how many more)")
    sub.add_argument("--loss", choices=LOSSES,
                     help="loss of a --layers network (default: mse; a preset has its own)")
    sub.add_argument("--epochs", type=_positive_int,
                     help="epochs to train (default: the preset's, 30 for the tutorial's and "
                          "--layers, 15 for convnet)")
    sub.add_argument("--batch-size", type=_positive_int,
                     help="rows per step (default: the preset's, 32; 128 for convnet)")
    sub.add_argument("--optimizer", choices=tuple(OPTIMIZER_RATES),
                     help="default: the preset's (sgd; adam for the convnets), sgd for "
                          "--layers")
    sub.add_argument("--lr", type=_learning_rate,
                     help="learning rate, or a schedule's peak (default: the preset's, else "
                          "0.01 for sgd and 0.001 for the others)")
    sub.add_argument("--schedule", type=_schedule_spec, metavar="SCHEDULE",
                     help="the learning rate step by step: cosine (to 0 over the training, "
                          "after a linear warmup from lr/10 over WARMUP_EPOCHS), exponential "
                          "(times RATE every EVERY_EPOCHS, default 1), piecewise (lr, then "
                          "each LR from the end of its EPOCH on), onecycle (up to lr and down "
                          f"again); {SCHEDULE_GRAMMAR} (default: the preset's, onecycle "
                          "for convnet-plus; none for the others and --layers)")
    sub.add_argument("--l2", type=_l2, metavar="L2",
                     help="L2 regularisation of every Dense and Conv2D kernel (adds "
                          "L2 * sum(w^2) to the loss)")
    sub.add_argument("--momentum", type=_momentum,
                     help="SGD's momentum in [0, 1) (default 0; --optimizer sgd only)")
    sub.add_argument("--seed", type=_non_negative_int,
                     help="seeds the initial weights, every epoch's shuffle and the dropout "
                          "masks (default: 0)")
    sub.add_argument("--validation-split", type=_fraction, metavar="FRACTION",
                     help="hold out the last FRACTION of the training images (as Keras) and "
                          "validate on them after every epoch, instead of on the test set")
    sub.add_argument("--early-stopping", type=_non_negative_int, metavar="PATIENCE",
                     help="stop once val_loss has not improved for PATIENCE epochs, and keep "
                          "the best epoch's weights")
    sub.add_argument("--checkpoint", metavar="FILE.npz",
                     help="save the model after every epoch (atomically: Ctrl-C leaves the "
                          "last completed epoch's file intact); {epoch} in the name numbers "
                          "the files")
    _add_data_and_backend(sub)
    sub.add_argument("--save", metavar="FILE.npz", help="write the trained model here")
    sub.add_argument("--history", metavar="FILE.json",
                     help="write the per-epoch metrics and the settings here as JSON")
    sub.add_argument("--quiet", action="store_true",
                     help="no per-epoch log; print only the final test accuracy")


def _add_evaluate(commands: Any) -> None:
    sub = commands.add_parser(
        "evaluate", help="print a saved model's loss and accuracy on the test set",
        description="Load a model written by 'train --save' and print its mean loss and "
                    "accuracy on the MNIST test set.")
    sub.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    _add_data_and_backend(sub)


def _add_predict(commands: Any) -> None:
    sub = commands.add_parser(
        "predict", help="classify images with a saved model",
        description="Print one line per image: 'FILE[i]: digit D (p=P)', D being the output "
                    "with the largest value P. Images look like MNIST's: a light digit on a "
                    "dark background (0 = black), 28x28 for a model trained on MNIST.",
        epilog="Accepted files: IDX images (raw or .gz; (n, 28, 28) or (28, 28)); .npy arrays "
               "of shape (28, 28), (n, 28, 28) or (n, 784); binary PGM (P5, maxval <= 255). "
               "uint8 pixels are divided by 255 (PGM: by its maxval); float arrays are used "
               "as they are, and should lie in [0, 1].")
    sub.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    sub.add_argument("files", metavar="FILE", nargs="+", help="image files to classify")
    sub.add_argument("--backend", choices=tuple(BACKENDS), default="fast",
                     help="compiled kernels or their NumPy twin (default: %(default)s)")


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """Train, then save and report; see the 'train' help."""
    if args.preset is not None and args.loss is not None:
        raise CLIError(f"--loss applies to --layers only (preset {args.preset!r} has its "
                       "own loss)")
    resumed = _resumed_model(args) if args.resume is not None else None
    if resumed is None:
        _resolve_recipe(args)
    for option, path in (("--save", args.save), ("--history", args.history),
                         ("--checkpoint", args.checkpoint)):
        if path is not None:
            _check_output_path(option, path)
    (x_train, y_train), (x_test, y_test) = load_data(mn.load_mnist, args.data)
    model = resumed or _build_model(args, input_dim=x_train.shape[1],
                                    steps=_steps_per_epoch(args, x_train.shape[0]))
    try:
        history = _fit(model, args, x_train, y_train, (x_test, y_test))
    except KeyboardInterrupt:
        return _report_interrupt(model, args)
    except TrainingDiverged as exc:
        if args.history is not None:
            _write_history(args.history, exc.history, model, args, diverged=True)
        print(f"{PROG}: error: training diverged at {exc} (the loss became NaN or Inf); "
              f"try a smaller --lr{'; model not saved' if args.save else ''}", file=sys.stderr)
        return EXIT_DIVERGED
    scores = model.evaluate(x_test, y_test)
    if args.save is not None:
        model.save(args.save)
        _say(args, f"saved model to {args.save}")
    if args.history is not None:
        _write_history(args.history, history, model, args, diverged=False)
        _say(args, f"saved history to {args.history}")
    print(f"test accuracy: {scores['accuracy']:.4f} (loss {scores['loss']:.4f})", flush=True)
    return EXIT_OK


def _resumed_model(args: argparse.Namespace) -> mn.Model:
    """The model of --resume, with the settings the file holds; refuses the options it
    would override."""
    given = [option for option, value in (
        ("--loss", args.loss), ("--optimizer", args.optimizer), ("--lr", args.lr),
        ("--momentum", args.momentum), ("--seed", args.seed), ("--schedule", args.schedule),
        ("--l2", args.l2), ("--validation-split", args.validation_split))
        if value is not None]
    if given:
        raise CLIError(f"{', '.join(given)}: --resume continues with the model file's own "
                       "settings")
    if args.epochs is None:
        raise CLIError("--resume needs --epochs: how many more epochs to train")
    model = load_model(args.resume, args.backend)
    if args.batch_size is None:
        # The batch size of the training it continues (older files: the tutorial's 32).
        args.batch_size = model.fit_batch_size or 32
    args.seed, args.lr = model.seed, model.optimizer.current_learning_rate()
    args.validation_split = model.fit_validation_split  # the same rows held out
    args.optimizer = type(model.optimizer).__name__.lower()
    _warn_if_schedule_ended(model)
    return model


def _warn_if_schedule_ended(model: mn.Model) -> None:
    """A resumed training past the end of its schedule trains at the schedule's last rate
    (a one-cycle's is 1/10,000 of its start, a cosine's 0 by default): say so."""
    rate = model.optimizer.learning_rate
    if isinstance(rate, CosineDecay):
        end = rate.warmup_steps + rate.decay_steps
    elif isinstance(rate, OneCycle):
        end = rate.total_steps
    else:
        return
    if model.optimizer.iterations >= end:
        warnings.warn(f"the model file's {type(rate).__name__} schedule ended at step {end} "
                      f"(this model has taken {model.optimizer.iterations}): the new epochs "
                      f"train at its final rate, {model.optimizer.current_learning_rate():.3g}",
                      stacklevel=2)


def _steps_per_epoch(args: argparse.Namespace, n_train: int) -> int:
    if args.validation_split:
        n_train = math.floor(n_train * (1.0 - args.validation_split))
    return max(1, -(-n_train // args.batch_size))


def _schedule(args: argparse.Namespace, steps: int) -> LearningRateSchedule | None:
    """The --schedule over the training's epochs of `steps` steps, peaking at --lr."""
    if args.schedule is None:
        return None
    kind, fields = args.schedule
    total = args.epochs * steps
    try:
        if kind == "cosine":
            warmup = int(fields[0]) * steps if fields else 0
            if warmup >= total:
                raise ValueError(f"the warmup ({fields[0]} epochs) must be shorter than "
                                 f"the training ({args.epochs} epochs)")
            if warmup:
                return CosineDecay(args.lr / 10, total - warmup, warmup_target=args.lr,
                                   warmup_steps=warmup)
            return CosineDecay(args.lr, total)
        if kind == "exponential":
            every = int(fields[1]) if len(fields) > 1 else 1
            return ExponentialDecay(args.lr, every * steps, float(fields[0]))
        if kind == "piecewise":
            pairs = [item.split("=") for item in fields[0].split(",")]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected EPOCH=LR pairs")
            return PiecewiseConstantDecay([int(e) * steps - 1 for e, _ in pairs],
                                          [args.lr, *(float(v) for _, v in pairs)])
        return OneCycle(args.lr, total)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--schedule {kind}:{':'.join(fields)}: {exc}") from None


def _callbacks(args: argparse.Namespace) -> list[Callback]:
    callbacks: list[Callback] = []
    if args.early_stopping is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=args.early_stopping,
                                       restore_best_weights=True))
    if args.checkpoint is not None:
        callbacks.append(ModelCheckpoint(args.checkpoint))
    return callbacks


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


def _check_output_path(option: str, path: str) -> None:
    """Fail before training, not after, if an output file cannot be written."""
    if not path:
        raise CLIError(f"{option}: empty file name")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"{option} {path}: is a folder")
    if not os.path.isdir(folder):
        raise CLIError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"{option} {path}: folder {folder} is not writable")


def _resolve_recipe(args: argparse.Namespace) -> None:
    """Fill in the settings left unset: the preset's recipe, or --layers' defaults (SGD
    0.01, batch 32, 30 epochs); --lr defaults to the chosen optimizer's rate."""
    recipe = dict(RECIPES[args.preset]) if args.preset is not None else {
        "optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32,
        "epochs": DEFAULT_PRESET_EPOCHS}
    if args.optimizer is None:
        args.optimizer = recipe["optimizer"]
    if args.momentum is not None and args.optimizer not in ("sgd", "rmsprop"):
        raise CLIError("--momentum applies to --optimizer sgd or rmsprop only")
    if args.lr is None:
        args.lr = (recipe["learning_rate"] if args.optimizer == recipe["optimizer"]
                   else OPTIMIZER_RATES[args.optimizer])
    if args.seed is None:
        args.seed = 0
    if args.schedule is None and recipe.get("schedule"):  # whichever the optimizer
        args.schedule = _schedule_spec(recipe["schedule"])
    if args.epochs is None:
        args.epochs = recipe["epochs"]
    if args.batch_size is None:
        args.batch_size = recipe["batch_size"]


# Keras' default learning rates.
OPTIMIZER_RATES = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}


def _optimizer(args: argparse.Namespace, steps: int) -> Optimizer:
    rate = _schedule(args, steps) or args.lr
    if args.optimizer == "adam":
        return mn.Adam(rate)
    if args.optimizer == "adamw":
        return mn.AdamW(rate)
    if args.optimizer == "rmsprop":
        return mn.RMSprop(rate, momentum=args.momentum or 0.0)
    return mn.SGD(rate, momentum=args.momentum or 0.0)


def _build_model(args: argparse.Namespace, input_dim: int, steps: int) -> mn.Model:
    optimizer = _optimizer(args, steps)
    if args.preset is not None:
        model = mn.preset(args.preset, seed=args.seed, backend=args.backend,
                          optimizer=optimizer)
        layers, shape = model.layers, {"input_shape": model.input_shape}
        loss = model.loss
    else:
        layers, loss = args.layers, args.loss or "mse"
        images = isinstance(layers[0], (Conv2D, MaxPool2D, RandomTranslation))
        side = math.isqrt(input_dim)
        shape = {"input_shape": (side, side, 1)} if images and side * side == input_dim else {
            "input_dim": input_dim}
    if args.l2:
        for layer in layers:
            if isinstance(layer, (Dense, Conv2D)):
                layer.kernel_regularizer = mn.regularizers.L2(args.l2)
    return mn.Model(layers, loss=loss, optimizer=optimizer, seed=args.seed,
                    backend=args.backend, **shape)


def _fit(model: mn.Model, args: argparse.Namespace, x: np.ndarray, y: np.ndarray,
         validation: tuple[np.ndarray, np.ndarray]) -> mn.History:
    """model.fit, re-showing its warnings one line each; raises TrainingDiverged when a NaN/Inf
    loss stopped it early."""
    split = {"validation_split": args.validation_split} if args.validation_split else {
        "validation_data": validation}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size,
                            verbose=0 if args.quiet else 1, callbacks=_callbacks(args),
                            **split)
    seen = set()
    for w in caught:
        if (w.category, str(w.message)) not in seen:
            seen.add((w.category, str(w.message)))
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    # Fewer epochs than asked for: early stopping, else a NaN/Inf loss.
    if len(history.epoch) < args.epochs and not model.stop_training:
        raise TrainingDiverged(f"epoch {len(history.epoch) + 1}/{args.epochs}", history)
    return history


def _report_interrupt(model: mn.Model, args: argparse.Namespace) -> int:
    """After Ctrl-C in fit: save the weights of the last completed step if asked to."""
    done = len(model.history.epoch) if model.history is not None else 0
    where = f"interrupted during epoch {done + 1}/{args.epochs} ({done} completed)"
    kept = (f"; {args.checkpoint} holds the last completed epoch"
            if args.checkpoint is not None and done else "")
    if args.save is None:
        outcome = f"nothing saved (pass --save to keep the weights){kept}"
    elif not all(np.isfinite(w).all() for w in model.get_weights()):
        outcome = f"weights are not finite, {args.save} not written"
    else:
        model.save(args.save)
        outcome = f"saved the weights of the last completed step to {args.save}{kept}"
    if args.history is not None and model.history is not None:
        _write_history(args.history, model.history, model, args, diverged=False)
    print(f"{PROG}: {where}; {outcome}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _write_history(path: str, history: mn.History, model: mn.Model,
                   args: argparse.Namespace, diverged: bool) -> None:
    config = model.get_config()
    record = {
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "epoch": [int(e) for e in history.epoch],
        "preset": args.preset,
        "layers": config["layers"],
        "input_shape": config["input_shape"],
        "loss": config["loss"],
        "optimizer": config["optimizer"],
        "seed": args.seed,
        "backend": args.backend,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "learning_rate": config["optimizer"].get("learning_rate"),
        "validation_split": args.validation_split,
        "resumed_from": args.resume,
        "diverged": diverged,
        "mnistnet_version": mn.__version__,
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary file in the destination folder, then rename it into
    place: readers see the old file or the complete new one, never a partial one. The file
    gets the usual permissions (0o666 minus the umask)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- evaluate


def load_data(loader: Callable[..., Any], data: str | None) -> Any:
    """loader(data) (mn.load_mnist or load_mnist_test), its failure to find or download the
    files said in the command line's terms."""
    try:
        return loader(data)
    except DownloadError as exc:
        raise CLIError(f"{_one_line(str(exc))} On the command line: --data DIR names a folder "
                       "holding the files.") from None


def load_model(path: str, backend: str) -> mn.Model:
    """mn.Model.load, refusing up front a file that is not even a zip archive (np.load would
    take it for a pickle and suggest allow_pickle=True, which is no advice to give)."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    if not head.startswith(_ZIP_MAGICS):
        raise CLIError(f"{path}: not a mnistnet model file (not an .npz archive)")
    return mn.Model.load(path, backend=backend)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print a saved model's loss and accuracy on the test set."""
    model = load_model(args.model, args.backend)
    x_test, y_test = load_data(load_mnist_test, args.data)
    scores = model.evaluate(x_test, y_test)
    print(f"loss: {scores['loss']:.4f} - accuracy: {scores['accuracy']:.4f}")
    return EXIT_OK


# --------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    """Print "FILE[i]: digit D (p=P)" for every image of every file."""
    model = load_model(args.model, args.backend)
    batches = [(name, read_images(name, model.input_dim)) for name in args.files]
    for name, x in batches:
        try:
            outputs = model.predict(x)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{name}: {exc}") from None
        digits = np.argmax(outputs, axis=1)
        for i, digit in enumerate(digits):
            print(f"{name}[{i}]: digit {digit} (p={outputs[i, digit]:.3f})")
    return EXIT_OK


def read_images(path: str, input_dim: int) -> np.ndarray:
    """Rows (n, input_dim) from an IDX, .npy or binary PGM file: float32 in [0, 1] for integer
    pixels, the file's own floats otherwise. Raises CLIError naming the file."""
    with open(path, "rb") as stream:
        head = stream.read(len(_NPY_MAGIC))
    kind = _image_kind(path, head)
    if kind == "pgm":
        return _read_pgm(path, input_dim)
    pixels = _read_npy(path) if kind == "npy" else read_idx(path)
    return _as_rows(pixels, path, input_dim)


def _image_kind(path: str, head: bytes) -> str:
    """"npy", "pgm" or "idx": from the file name's suffix, else from the first bytes."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy" or head.startswith(_NPY_MAGIC):
        return "npy"
    if suffix in (".pgm", ".pnm") or head.startswith(b"P"):
        return "pgm"
    if head.startswith((_GZIP_MAGIC, b"\x00\x00")):
        return "idx"
    if not head:
        raise CLIError(f"{path}: empty file")
    raise CLIError(f"{path}: not an image file this command reads (IDX, .npy or binary PGM)")


def _read_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise CLIError(f"{path}: not a readable .npy array ({_one_line(str(exc))})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise CLIError(f"{path}: an .npz archive, not a .npy array")
    return array


def _as_rows(pixels: np.ndarray, path: str, input_dim: int) -> np.ndarray:
    """(side, side), (n, side, side), (n, input_dim) or (input_dim,) -> (n, input_dim)."""
    shape = pixels.shape
    if pixels.ndim == 1 and shape[0] == input_dim:
        rows = pixels.reshape(1, input_dim)
    elif pixels.ndim == 2 and shape[1] == input_dim:
        rows = pixels
    elif pixels.ndim == 2 and shape[0] * shape[1] == input_dim:
        rows = pixels.reshape(1, input_dim)
    elif pixels.ndim == 3 and shape[1] * shape[2] == input_dim:
        rows = pixels.reshape(shape[0], input_dim)
    else:
        raise CLIError(f"{path}: images of shape {shape} do not fit the model's {input_dim} "
                       f"inputs (expected {_expected_shapes(input_dim)})")
    if rows.shape[0] == 0:
        raise CLIError(f"{path}: no images (shape {shape})")
    return _scaled(rows, path)


def _expected_shapes(input_dim: int) -> str:
    side = math.isqrt(input_dim)
    if side * side == input_dim:
        return f"({side}, {side}), (n, {side}, {side}) or (n, {input_dim})"
    return f"(rows, cols) with rows * cols = {input_dim}, (n, rows, cols) or (n, {input_dim})"


def _scaled(rows: np.ndarray, path: str, maxval: int = 255) -> np.ndarray:
    if rows.dtype == np.uint8:
        return rows.astype(np.float32) / np.float32(maxval)
    if rows.dtype.kind == "f":
        return rows
    raise CLIError(f"{path}: pixels of type {rows.dtype} are not supported "
                   "(expected uint8 or floating point)")


def _read_pgm(path: str, input_dim: int) -> np.ndarray:
    """One binary PGM (P5) image with width * height == input_dim as a (1, input_dim) row."""
    with open(path, "rb") as stream:
        data = stream.read(PGM_MAX_HEADER + input_dim + 1)
    if not data.startswith(b"P5"):
        raise CLIError(f"{path}: not a binary PGM file (magic {data[:2]!r}, expected b'P5')")
    width, height, maxval, start = _pgm_header(data, path)
    if not 1 <= maxval <= 255:
        raise CLIError(f"{path}: PGM maxval {maxval} is not supported (1..255)")
    if width * height != input_dim:
        raise CLIError(f"{path}: a {width}x{height} image does not fit the model's "
                       f"{input_dim} inputs")
    payload = data[start:]
    if len(payload) < input_dim:
        raise CLIError(f"{path}: truncated PGM ({len(payload)} of the {input_dim} bytes of "
                       f"pixels a {width}x{height} image has)")
    if len(payload) > input_dim:
        raise CLIError(f"{path}: trailing data after the {input_dim} bytes of pixels of a "
                       f"{width}x{height} PGM")
    pixels = np.frombuffer(payload, dtype=np.uint8)
    if int(pixels.max()) > maxval:
        raise CLIError(f"{path}: pixel value {int(pixels.max())} exceeds the maxval {maxval}")
    return _scaled(pixels.reshape(1, input_dim), path, maxval)


def _pgm_header(data: bytes, path: str) -> tuple[int, int, int, int]:
    """Width, height, maxval and the offset of the pixels, after the magic "P5"."""
    pos, values = 2, []
    for field in ("width", "height", "maxval"):
        pos = _skip_pgm_separator(data, pos, path, field)
        start = pos
        while pos < len(data) and data[pos: pos + 1].isdigit() and pos - start < 9:
            pos += 1
        if pos == start or (pos < len(data) and data[pos: pos + 1].isdigit()):
            raise CLIError(f"{path}: bad PGM header (expected the {field} as a number of at "
                           "most 9 digits)")
        values.append(int(data[start:pos]))
    if pos >= len(data) or data[pos] not in _PGM_WHITESPACE:
        raise CLIError(f"{path}: bad PGM header (expected one whitespace byte after maxval)")
    return values[0], values[1], values[2], pos + 1


def _skip_pgm_separator(data: bytes, pos: int, path: str, field: str) -> int:
    """Skip whitespace and '#' comments (at least one of them) before a header field."""
    begin = pos
    while pos < len(data) and pos < PGM_MAX_HEADER:
        if data[pos] in _PGM_WHITESPACE:
            pos += 1
        elif data[pos: pos + 1] == b"#":
            newline = min((i for i in (data.find(b"\n", pos), data.find(b"\r", pos)) if i >= 0),
                          default=len(data))
            pos = newline
        else:
            break
    if pos == begin or pos >= min(len(data), PGM_MAX_HEADER):
        raise CLIError(f"{path}: bad PGM header (expected whitespace, then the {field})")
    return pos


# --------------------------------------------------------------------------- info, main


def cmd_info(args: argparse.Namespace) -> int:
    """Print mnistnet.show_config()."""
    mn.show_config()
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "info": cmd_info,
    "bench": bench.run, "export": export.run, "plot": plot.run, "demo": demo.run,
    "sweep": _sweep_cli.run,
}


def _one_line(message: str) -> str:
    """Collapse a multi-line message (e.g. a DownloadError listing mirrors) into one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(lines).replace(":; ", ": ") if lines else message


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return _one_line(str(exc)) or type(exc).__name__


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """Show a warning as one line on stderr."""
    print(f"{PROG}: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mnistnet`` command with ``argv`` (default: sys.argv[1:]); return the exit
    code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = build_parser().parse_args(argv)
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
            return code
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except CLIError as exc:
            message = str(exc)
        except USER_ERRORS as exc:
            message = _describe(exc)
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR
