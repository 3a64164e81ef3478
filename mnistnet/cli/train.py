"""``mnistnet train``: train a preset or a --layers stack on MNIST or another dataset of the
family (--dataset), report its test accuracy."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from mnistnet._files import write_text_atomically
from mnistnet._version import __version__
from mnistnet.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    check_name_fields,
    fill_file_name,
)
from mnistnet.cli.common import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    CLIError,
    add_data_and_backend,
    check_fits,
    check_output_path,
    dataset_for,
    fraction,
    l2_factor,
    learning_rate,
    load_dataset,
    load_model,
    non_negative_int,
    positive_int,
    unit_fraction,
)
from mnistnet.kinds import kind_of, layers_grammar, parse_layers
from mnistnet.layers import Layer, Rescaling
from mnistnet.losses import CategoricalCrossentropy, Loss
from mnistnet.model import LOSSES, Model, loss_for_output
from mnistnet.optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from mnistnet.plan import takes_images
from mnistnet.presets import PRESETS, RECIPES, optimizer_options, preset
from mnistnet.regularizers import L2
from mnistnet.schedules import (
    CosineDecay,
    ExponentialDecay,
    LearningRateSchedule,
    OneCycle,
    PiecewiseConstantDecay,
)
from mnistnet.trainer import History

NAME = "train"
HELP = "train a network on MNIST (or --dataset NAME) and report its test accuracy"
# What a --layers network trains with unless told otherwise: the tutorial's recipe.
LAYERS_RECIPE = {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32, "epochs": 30}


class TrainingDiverged(Exception):
    """The loss became NaN or Inf during training (exit code 3); ``history`` holds the epochs
    completed before that."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


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


# The logs' keys in the command's training: it always validates (test set or split).
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _checkpoint_name(text: str) -> str:
    """A --checkpoint name whose fields the epoch and the logs can fill."""
    try:
        check_name_fields(text, "the file name")
        fill_file_name(text, 1, dict.fromkeys(METRICS, 0.0), "the file name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _layers(text: str) -> list[Layer]:
    """--layers' value parsed by the table of kinds' grammar."""
    try:
        return parse_layers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DESCRIPTION = ("Train a network by minibatch gradient descent, validating on the test "
                    "set after every epoch (Keras-style log), then print the final test "
                    "accuracy. "
                    "Ctrl-C stops between two steps; with --save the weights so far are kept, "
                    "and a --checkpoint file keeps the last completed epoch.")


def _by_recipe(setting: str, show: Callable[[Any], str] = str) -> str:
    """Each preset's value of a recipe setting, presets of one value together: "30 for
    perceptron, hidden-relu, cross-entropy; 15 for convnet, convnet-plus; 10 for lenet5"."""
    groups: dict[str, list[str]] = {}
    for name, recipe in RECIPES.items():
        groups.setdefault(show(recipe.get(setting)), []).append(name)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _presets_help() -> str:
    listed = ", ".join(f"{name} ({spec['about']})" for name, spec in PRESETS.items())
    listed = listed.replace("%", "%%")  # argparse formats help strings with %
    return (f"a preset network, trained with its recipe unless told otherwise: {listed}; the "
            "first three are the tutorial's")


def add_arguments(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``mnistnet train``."""
    arch = sub.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", choices=tuple(PRESETS), help=_presets_help())
    arch.add_argument("--layers", type=_layers, metavar="LAYER,...",
                      help="a custom stack, input side first, e.g. 128:relu,64:relu,10:softmax "
                           "or conv:32:3:relu,pool:2,flatten,dropout:0.5,10:softmax; "
                           f"{layers_grammar()}")
    arch.add_argument("--resume", metavar="MODEL.npz",
                      help="continue training a model written by --save or --checkpoint: "
                           "its architecture, optimizer state and position (the next "
                           "epoch's shuffle and masks) and --early-stopping's counters, so "
                           "that 5 epochs, then 5 more, give the same weights as 10 "
                           "straight; needs --epochs (how many more)")
    sub.add_argument("--loss", choices=LOSSES,
                     help="loss of a --layers network (default: the output's, "
                          "categorical_crossentropy after softmax, else mse; a preset has "
                          "its own)")
    sub.add_argument("--label-smoothing", type=unit_fraction, metavar="AMOUNT",
                     help="smooth the targets of categorical_crossentropy towards the "
                          "uniform distribution, as Keras' label_smoothing (default: the "
                          f"preset's, {_by_recipe('label_smoothing', lambda v: f'{v or 0:g}')};"
                          " 0 for --layers)")
    sub.add_argument("--epochs", type=positive_int,
                     help=f"epochs to train (default: the preset's, {_by_recipe('epochs')}; "
                          f"{LAYERS_RECIPE['epochs']} for --layers)")
    sub.add_argument("--batch-size", type=positive_int,
                     help=f"rows per step (default: the preset's, "
                          f"{_by_recipe('batch_size')}; {LAYERS_RECIPE['batch_size']} for "
                          "--layers)")
    sub.add_argument("--optimizer", choices=tuple(OPTIMIZER_RATES),
                     help=f"default: the preset's, {_by_recipe('optimizer')}; "
                          f"{LAYERS_RECIPE['optimizer']} for --layers")
    sub.add_argument("--lr", type=learning_rate,
                     help=f"learning rate, or a schedule's peak (default: the preset's, "
                          f"{_by_recipe('learning_rate', lambda rate: f'{rate:g}')}; else "
                          "0.01 for sgd and 0.001 for the others)")
    sub.add_argument("--schedule", type=_schedule_spec, metavar="SCHEDULE",
                     help="the learning rate step by step: cosine (to 0 over the training, "
                          "after a linear warmup from lr/10 over WARMUP_EPOCHS), exponential "
                          "(times RATE every EVERY_EPOCHS, default 1), piecewise (lr, then "
                          "each LR from the end of its EPOCH on), onecycle (up to lr and down "
                          f"again); {SCHEDULE_GRAMMAR} (default: the preset's, "
                          f"{_by_recipe('schedule', lambda s: s or 'none')}; none for "
                          "--layers)")
    sub.add_argument("--l2", type=l2_factor, metavar="L2",
                     help="L2 regularisation of every Dense and Conv2D kernel (adds "
                          "L2 * sum(w^2) to the loss)")
    sub.add_argument("--momentum", type=unit_fraction,
                     help="SGD's momentum in [0, 1) (default 0; --optimizer sgd only)")
    sub.add_argument("--seed", type=non_negative_int,
                     help="seeds the initial weights, every epoch's shuffle and the dropout "
                          "masks (default: 0)")
    sub.add_argument("--validation-split", type=fraction, metavar="FRACTION",
                     help="hold out the last FRACTION of the training images (as Keras) and "
                          "validate on them after every epoch, instead of on the test set")
    sub.add_argument("--early-stopping", type=non_negative_int, metavar="PATIENCE",
                     help="stop once val_loss has not improved for PATIENCE epochs, and keep "
                          "the best epoch's weights")
    sub.add_argument("--checkpoint", metavar="FILE.npz", type=_checkpoint_name,
                     help="save the model after every epoch (atomically: Ctrl-C leaves the "
                          "last completed epoch's file intact); {epoch} in the name numbers "
                          "the files, and a logs key ({val_loss:.4f}) may be in it too")
    add_data_and_backend(sub, default_dataset="mnist; a --resume model's own")
    sub.add_argument("--uint8", action="store_true",
                     help="keep the images as stored, uint8 (a quarter of the memory of "
                          "float32), and start the network with Rescaling(1/255), which "
                          "turns each row into floats as it is read: the same weights, bit "
                          "for bit (a --layers stack starting with rescale: takes uint8 "
                          "anyway)")
    sub.add_argument("--save", metavar="FILE.npz",
                     help="write the trained model here (for evaluate, predict, plot, export "
                          "and demo); without it, nothing is saved")
    sub.add_argument("--history", metavar="FILE.json",
                     help="write the per-epoch metrics and the settings here as JSON")
    sub.add_argument("--quiet", action="store_true",
                     help="no per-epoch log; print only the final test accuracy")
    return sub


def run(args: argparse.Namespace) -> int:
    """Train, then save and report; see the 'train' help."""
    if args.preset is not None and args.loss is not None:
        raise CLIError(f"--loss applies to --layers only (preset {args.preset!r} has its "
                       "own loss)")
    resumed = _resumed_model(args) if args.resume is not None else None
    if resumed is None:
        _resolve_recipe(args)
    first_checkpoint = (None if args.checkpoint is None else fill_file_name(
        args.checkpoint, 1, dict.fromkeys(METRICS, 0.0), "--checkpoint"))  # checked: no error
    for option, path in (("--save", args.save), ("--history", args.history),
                         ("--checkpoint", first_checkpoint)):
        if path is not None:
            check_output_path(option, path)
    name = dataset_for(args, resumed)
    if resumed is not None:
        _check_resumed_dataset(resumed, name)
    data = load_dataset(name, args.data, pixels=_takes_pixels(args, resumed))
    (x_train, y_train), (x_test, y_test) = data
    model = resumed or _build_model(args, input_dim=x_train.shape[1],
                                    steps=_steps_per_epoch(args, x_train.shape[0]),
                                    classes=len(data.class_names))
    if not model.class_names_given:  # a new model, or an older file's
        model.class_names, model.dataset = data.class_names, data.name
    _say(args, f"loss: {model.loss} ({_why_this_loss(model, args)})")
    last = model.epochs_trained + args.epochs  # epochs are numbered in the model's count
    try:
        history = _fit(model, args, x_train, y_train, (x_test, y_test))
    except KeyboardInterrupt:
        return _report_interrupt(model, args, last)
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
    else:
        _say(args, "model not saved (add --save model.npz to keep it)")
    if args.history is not None:
        _write_history(args.history, history, model, args, diverged=False)
        _say(args, f"saved history to {args.history}")
    print(f"test accuracy: {scores['accuracy']:.4f} (loss {scores['loss']:.4f})", flush=True)
    return EXIT_OK


def _check_resumed_dataset(model: Model, name: str) -> None:
    """A resumed training goes on with the model's own dataset (older files: any with as
    many classes)."""
    if model.dataset is not None and name != model.dataset:
        raise CLIError(f"--dataset {name}: the --resume model was trained on {model.dataset}")
    check_fits(model, name)


def _takes_pixels(args: argparse.Namespace, resumed: Model | None) -> bool:
    """Whether the network starts with a Rescaling, and so takes the images as uint8."""
    if resumed is not None:
        if args.uint8 and not resumed.plan.takes_pixels:
            raise CLIError("--uint8: the --resume model does not start with a Rescaling "
                           "layer (it was trained on floats)")
        return resumed.plan.takes_pixels
    return args.uint8 or (args.layers is not None and takes_images_as_is(args.layers))


def takes_images_as_is(layers: list[Layer]) -> bool:
    """Whether the stack starts with a Rescaling (its images then come as uint8)."""
    return kind_of(layers[0]).applied_at_input


def _why_this_loss(model: Model, args: argparse.Namespace) -> str:
    """Where the loss came from, for the log's first line."""
    if args.resume is not None:
        return "the model file's"
    if args.preset is not None:
        return f"the {args.preset} preset's"
    if args.loss is not None:
        return "--loss"
    return f"chosen for the {model.layers[-1].activation} output; --loss to change it"


def _resumed_model(args: argparse.Namespace) -> Model:
    """The model of --resume, with the settings the file holds; refuses the options it
    would override."""
    given = [option for option, value in (
        ("--loss", args.loss), ("--optimizer", args.optimizer), ("--lr", args.lr),
        ("--momentum", args.momentum), ("--seed", args.seed), ("--schedule", args.schedule),
        ("--l2", args.l2), ("--validation-split", args.validation_split),
        ("--label-smoothing", args.label_smoothing))
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


def _warn_if_schedule_ended(model: Model) -> None:
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


def _resolve_recipe(args: argparse.Namespace) -> None:
    """Fill in the settings left unset: the preset's recipe, or --layers' defaults (SGD
    0.01, batch 32, 30 epochs); --lr defaults to the chosen optimizer's rate."""
    recipe = dict(RECIPES[args.preset] if args.preset is not None else LAYERS_RECIPE)
    if args.optimizer is None:
        args.optimizer = recipe["optimizer"]
    if args.momentum is not None and args.optimizer not in ("sgd", "rmsprop"):
        raise CLIError("--momentum applies to --optimizer sgd or rmsprop only")
    if args.momentum is None and args.optimizer == recipe["optimizer"]:
        args.momentum = recipe.get("momentum")
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
    options: dict[str, Any] = {}  # the recipe's betas, EMA, ... when its optimizer is kept
    if args.preset is not None and args.optimizer == RECIPES[args.preset]["optimizer"]:
        options = {key: value for key, value in optimizer_options(args.preset).items()
                   if key != "momentum"}  # --momentum has been resolved from the recipe
    if args.optimizer == "adam":
        return Adam(rate, **options)
    if args.optimizer == "adamw":
        return AdamW(rate, **options)
    if args.optimizer == "rmsprop":
        return RMSprop(rate, momentum=args.momentum or 0.0, **options)
    return SGD(rate, momentum=args.momentum or 0.0, **options)


def _build_model(args: argparse.Namespace, input_dim: int, steps: int, classes: int) -> Model:
    optimizer = _optimizer(args, steps)
    if args.preset is not None:
        model = preset(args.preset, seed=args.seed, backend=args.backend,
                       optimizer=optimizer, input_dtype="uint8" if args.uint8 else "float32",
                       classes=classes)
        layers, shape = model.layers, {"input_shape": model.input_shape}
        loss = model.loss_object
    else:
        layers, loss = args.layers, args.loss  # None: the output's (Model's default)
        if args.uint8 and not takes_images_as_is(layers):
            layers = [Rescaling(1 / 255), *layers]
        images = takes_images(layers)
        side = math.isqrt(input_dim)
        shape = {"input_shape": (side, side, 1)} if images and side * side == input_dim else {
            "input_dim": input_dim}
    if args.l2:
        for layer in layers:
            if kind_of(layer).gemm:  # the kinds with a kernel: Dense, Conv2D
                layer.kernel_regularizer = L2(args.l2)
    if args.label_smoothing is not None:
        loss = _smoothed(loss, layers, args.label_smoothing)
    return Model(layers, loss=loss, optimizer=optimizer, seed=args.seed, backend=args.backend,
                 **shape)


def _smoothed(loss: str | Loss | None, layers: list, smoothing: float) -> Loss:
    """The cross-entropy with --label-smoothing (a loss of another kind refuses it)."""
    name = getattr(loss, "name", loss) or loss_for_output(layers[-1].activation)
    if name != "categorical_crossentropy":
        raise CLIError(f"--label-smoothing applies to categorical_crossentropy, not {name}")
    return CategoricalCrossentropy(label_smoothing=smoothing)


def _fit(model: Model, args: argparse.Namespace, x: np.ndarray, y: np.ndarray,
         validation: tuple[np.ndarray, np.ndarray]) -> History:
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
        last = model.epochs_trained - len(history.epoch) + args.epochs
        raise TrainingDiverged(f"epoch {model.epochs_trained + 1}/{last}", history)
    return history


def _report_interrupt(model: Model, args: argparse.Namespace, last: int) -> int:
    """After Ctrl-C in fit: save the weights of the last completed step if asked to. Epochs
    are numbered in the model's count, as the log numbers them (up to `last`)."""
    done = len(model.history.epoch) if model.history is not None else 0
    where = (f"interrupted during epoch {model.epochs_trained + 1}/{last} ({done} completed"
             f"{' in this run' if model.epochs_trained > done else ''})")
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


def _write_history(path: str, history: History, model: Model,
                   args: argparse.Namespace, diverged: bool) -> None:
    config = model.get_config()
    record = {
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "epoch": [int(e) for e in history.epoch],
        "preset": args.preset,
        "dataset": model.dataset,
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
        "mnistnet_version": __version__,
    }
    write_text_atomically(path, json.dumps(record, indent=2) + "\n")
