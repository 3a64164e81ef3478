"""What every command of the ``mnistnet`` CLI shares: its errors and exit codes, the
argument types, and reading a model file or the data the way a command line reports them."""

from __future__ import annotations

import argparse
import errno
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

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


def momentum_value(text: str) -> float:
    value = number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text!r}")
    return value


def add_data_and_backend(sub: argparse.ArgumentParser) -> None:
    """--data and --backend, as the commands that read MNIST take them."""
    sub.add_argument("--data", metavar="DIR",
                     help="folder holding the four MNIST IDX files (raw or .gz); default: "
                          "$MNISTNET_DATA, else the per-user cache, else download")
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


def load_data(loader: Callable[..., Any], data: str | None) -> Any:
    """loader(data) (mn.load_mnist or load_mnist_test), its failure to find or download the
    files said in the command line's terms."""
    try:
        return loader(data)
    except DownloadError as exc:
        raise CLIError(f"{one_line(str(exc))} On the command line: --data DIR names a folder "
                       "holding the files.") from None


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
