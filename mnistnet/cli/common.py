"""What every command of the ``mnistnet`` CLI shares: its errors and exit codes, the
argument types, and reading a model file or the data the way a command line reports them."""

from __future__ import annotations

import argparse
import errno
import math
import os
from collections.abc import Callable
from typing import Any, NoReturn

from mnistnet import datasets
from mnistnet.data import DownloadError
from mnistnet.model import BACKENDS, Model

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

PROG = "mnistnet"

# Errors the library (and the file system) raise for things a user can get wrong: absurd
# sizes too, which may reach numpy as a MemoryError or an OverflowError.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, EOFError, MemoryError,
               OverflowError)


class CLIError(Exception):
    """An error to report as one line ``mnistnet: error: <message>`` (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, raised as CLIError."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def learning_rate(text: str) -> float:
    value = number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value


def l2_factor(text: str) -> float:
    value = number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """A number in [0, 1): --momentum's and --label-smoothing's values."""
    value = number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text!r}")
    return value


def dataset_name(text: str) -> str:
    """--dataset's value: a name of mnistnet.datasets (an unknown one: the message lists
    them)."""
    try:
        datasets.class_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_dataset(sub: argparse.ArgumentParser, default: str = "mnist") -> None:
    """--dataset and --data, as the commands that read a dataset take them."""
    sub.add_argument("--dataset", metavar="NAME", type=dataset_name,
                     help=f"the images: {', '.join(datasets.NAMES)} (default: {default})")
    sub.add_argument("--data", metavar="DIR",
                     help="folder holding the dataset's IDX files (raw or .gz); default: "
                          "$MNISTNET_DATA (MNIST) or $MNISTNET_DATASETS/<dataset>, else the "
                          "per-user cache, else download")


def add_data_and_backend(sub: argparse.ArgumentParser,
                         default_dataset: str = "mnist") -> None:
    """--dataset, --data and --backend, as the commands that read a dataset take them."""
    add_dataset(sub, default_dataset)
    add_backend(sub)


def add_backend(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--backend", choices=tuple(BACKENDS), default="fast",
                     help="compiled kernels or their NumPy twin (default: %(default)s)")


# --------------------------------------------------------------------------- files


def check_output_path(option: str, path: str) -> None:
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


def load_data(loader: Callable[..., Any], data: str | None, *args: Any, **kwargs: Any) -> Any:
    """loader(data, ...) (mn.load_mnist, or a loader of mnistnet.datasets given a dataset's
    name first), its failure to find or download the files said in the command line's
    terms."""
    try:
        return loader(*args, data, **kwargs)
    except DownloadError as exc:
        raise CLIError(f"{one_line(str(exc))} On the command line: --data DIR names a folder "
                       "holding the files.") from None


def load_dataset(name: str, data: str | None, pixels: bool = False) -> datasets.Dataset:
    """Dataset `name` (both splits) from --data or the usual places: float32 in [0, 1], or
    uint8 as stored when `pixels` (for a model whose first layer is Rescaling)."""
    return load_data(datasets.load, data, name, normalize=not pixels)


def load_test_split(name: str, data: str | None, pixels: bool = False,
                    ) -> tuple[Any, Any]:
    """Dataset `name`'s test split only, as load_dataset gives it."""
    return load_data(datasets.load_test, data, name, normalize=not pixels)


def dataset_for(args: argparse.Namespace, model: Model | None = None) -> str:
    """The dataset a command works on: --dataset, else the model's own, else MNIST."""
    return args.dataset or (model.dataset if model is not None else None) or "mnist"


def check_fits(model: Model, name: str) -> None:
    """Refuse a dataset whose classes the model's outputs cannot stand for."""
    classes = len(datasets.class_names(name))
    if model.n_outputs != classes:
        raise CLIError(f"the model has {model.n_outputs} outputs but {name} has {classes} "
                       f"classes: give the --dataset it was trained on")


def name_classes(model: Model, name: str | None) -> None:
    """--dataset names the classes of a model saved without names (older files); a model
    that has names keeps them, and a --dataset naming others is refused."""
    if name is None:
        return
    check_fits(model, name)
    names = datasets.class_names(name)
    if not model.class_names_given:
        model.class_names = names
    elif model.class_names != names:
        trained = f" (it was trained on {model.dataset})" if model.dataset else ""
        raise CLIError(f"the model's classes are {', '.join(model.class_names)}{trained}, not "
                       f"{name}'s")


def load_model(path: str, backend: str) -> Model:
    """Model.load: it refuses, with one clear line, what is not a model file (not a zip
    archive, a device, a FIFO, a file larger than the machine's memory) before reading it.
    A missing file is said as the system says it, as for every file the commands read."""
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    return Model.load(path, backend=backend)


def one_line(message: str) -> str:
    """Collapse a multi-line message (e.g. a DownloadError listing mirrors) into one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(lines).replace(":; ", ": ") if lines else message


def describe(exc: BaseException) -> str:
    """One line for a user error: the file and the reason for an OSError, the message
    otherwise (a MemoryError's is often empty)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return f"out of memory ({one_line(str(exc)) or 'MemoryError'}); try smaller sizes"
    return one_line(str(exc)) or type(exc).__name__
