"""``mnistnet export``: a saved model as an ONNX file and/or a dependency-free C file."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistnet.cli.common import CLIError, load_model
from mnistnet.export import (
    DEFAULT_C_NAME,
    DEFAULT_OPSET,
    MIN_OPSET,
    _check_opset,
    _import_onnx,
    check_c_name,
    check_output_folder,
    export_c,
    export_onnx,
)
from mnistnet.model import Model

NAME = "export"
HELP = "write a saved model as an ONNX file or as a dependency-free C source file"
DESCRIPTION = ("Write a model saved by 'train --save' (or Model.save) as an ONNX graph (input "
               "'input' of the model's input shape with a dynamic batch axis, output 'output'; "
               "needs pip install \"mnistnet[onnx]\"), and/or as C99 source: DIR/NAME.h and "
               "DIR/NAME.c with int NAME_predict(const float *input, float *output), weights "
               "as static const arrays, no allocation, only libm.")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `mnistnet export` to `parser` (the CLI's subparser)."""
    parser.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    parser.add_argument("--onnx", metavar="FILE.onnx", help="write the model as ONNX here")
    parser.add_argument("--opset", type=int,
                        help=f"ONNX opset version, {MIN_OPSET} or later (default: "
                             f"{DEFAULT_OPSET})")
    parser.add_argument("--c", metavar="DIR", dest="c_dir",
                        help="write NAME.h and NAME.c into this folder (made if missing)")
    parser.add_argument("--name", help=f"C name: the files' names and the prefix of "
                                       f"NAME_predict (default: {DEFAULT_C_NAME})")
    return parser


def run(args: argparse.Namespace) -> int:
    """Export the model as the parsed options ask. Every option is checked before anything
    is written; errors are CLIError, ValueError or OSError (one line from the CLI)."""
    if args.onnx is None and args.c_dir is None:
        raise CLIError("nothing to do: give --onnx FILE.onnx and/or --c DIR "
                       "(see 'mnistnet export --help')")
    if args.name is not None and args.c_dir is None:
        raise CLIError("--name applies to --c only")
    if args.opset is not None and args.onnx is None:
        raise CLIError("--opset applies to --onnx only")
    name = check_c_name(DEFAULT_C_NAME if args.name is None else args.name)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if args.c_dir is not None:
        check_output_folder(args.c_dir, f"--c {args.c_dir}")
    if args.onnx is not None:
        check_output_folder(Path(args.onnx).parent, f"--onnx {args.onnx}")
        try:
            _check_opset(_import_onnx(), opset)
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    model = load_model(args.model, "fast")
    if args.onnx is not None:
        print(f"wrote {export_onnx(model, args.onnx, opset)}: {onnx_signature(model)}")
    if args.c_dir is not None:
        header, source = export_c(model, args.c_dir, name)
        print(f"wrote {header} and {source}: {c_signature(model, name)}")
    return 0


def onnx_signature(model: Model) -> str:
    """What the ONNX graph takes and gives: a convnet's input is images, not predict's rows."""
    shape = ", ".join(["n", *map(str, model.input_shape)])
    text = f"input 'input' of shape ({shape}), float32"
    if len(model.input_shape) > 1:
        text += f" (for rows of {model.input_dim}: x.reshape(-1, {shape[3:]}))"
    return f"{text}; output 'output' of shape (n, {model.n_outputs})"


def c_signature(model: Model, name: str) -> str:
    """What NAME_predict reads and writes."""
    one = (f"one {tuple(model.input_shape)} image, row-major, channels last"
           if len(model.input_shape) > 1 else "one row")
    return (f"{name}_predict(input, output) reads {model.input_dim} floats ({one}) and writes "
            f"{model.n_outputs}")
