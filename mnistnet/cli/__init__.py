"""The ``mnistnet`` command (also ``python -m mnistnet``), one module per subcommand: train,
evaluate, predict, bench, export, plot, demo, sweep, info.

    mnistnet train --preset cross-entropy --epochs 20 --save model.npz
    mnistnet train --preset convnet --epochs 5 --checkpoint ckpt.npz --save model.npz
    mnistnet train --resume model.npz --epochs 5 --save model.npz
    mnistnet evaluate model.npz
    mnistnet predict model.npz digit.png --show seen.png
    mnistnet predict model.npz digit.pgm more.npy t10k-images-idx3-ubyte.gz
    mnistnet plot model.npz --out pictures
    mnistnet export model.npz --onnx model.onnx --c firmware/ --name digits
    mnistnet export model.npz --c firmware/ --int8 --calibration 1000
    mnistnet demo model.npz

Each subcommand's module has NAME, HELP, DESCRIPTION, add_arguments(parser) and run(args);
the library below never imports this package.

Exit codes: 0 success; 2 bad arguments or any other error a user can cause (missing or
corrupt files, unknown names, ...), reported as one line ``mnistnet: error: ...`` on stderr;
3 training diverged (the loss became NaN or Inf); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from mnistnet._version import __version__
from mnistnet.cli import bench, demo, evaluate, export, info, plot, predict, sweep, train
from mnistnet.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    PROG,
    USER_ERRORS,
    CLIError,
    Parser,
    describe,
    one_line,
)

__all__ = ["COMMANDS", "build_parser", "main"]

SUBCOMMANDS = (train, evaluate, predict, bench, export, plot, demo, sweep, info)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    module.NAME: module.run for module in SUBCOMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mnistnet`` command and its subcommands."""
    parser = Parser(
        prog=PROG, allow_abbrev=False,
        description="Train and run small neural networks, dense and convolutional, on "
                    "MNIST-style images.",
        epilog="Exit codes: 0 success, 2 error (bad arguments, missing or corrupt files), "
               "3 training diverged, 130 interrupted (Ctrl-C). Data is looked for in --data, "
               "else $MNISTNET_DATA, else the per-user cache, else downloaded there.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_arguments(commands.add_parser(
            module.NAME, help=module.HELP, description=module.DESCRIPTION,
            epilog=getattr(module, "EPILOG", None)))
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """Show a warning as one line on stderr."""
    print(f"{PROG}: warning: {one_line(str(message))}", file=sys.stderr, flush=True)


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
            message = describe(exc)
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR
