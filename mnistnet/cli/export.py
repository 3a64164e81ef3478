"""``mnistnet export``: a saved model as an ONNX file and/or a dependency-free C file, in float
or (``--int8``) quantised to int8 on training images of its dataset (MNIST by default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mnistnet.cli.common import (
    CLIError,
    check_fits,
    dataset_name,
    load_dataset,
    load_model,
    positive_int,
)
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
from mnistnet.export_int8 import c_sizes
from mnistnet.int8 import (
    DEFAULT_CALIBRATION_ROWS,
    MIN_CALIBRATION_ROWS,
    QuantizedModel,
    calibration_sample,
    check_quantizable,
    quantize,
)
from mnistnet.model import Model

NAME = "export"
HELP = ("write a saved model as an ONNX file or as a dependency-free C source file, in float or "
        "int8")
DESCRIPTION = ("Write a model saved by 'train --save' (or Model.save) as an ONNX graph (input "
               "'input' of the model's input shape with a dynamic batch axis, output 'output'; "
               "needs pip install \"mnistnet[onnx]\"), and/or as C99 source: DIR/NAME.h and "
               "DIR/NAME.c with int NAME_predict(const float *input, float *output), weights "
               "as static const arrays, no allocation, only libm. With --int8, both are of "
               "the model quantised to int8 (TensorFlow Lite's post-training scheme, "
               "calibrated on training images of the model's dataset, else MNIST's): int8 "
               "weights, integer layers, the same NAME_predict (plus NAME_predict_int8); the "
               "ONNX graph in the QDQ format.")
MNIST_PIXELS = 784  # what --int8 calibrates on


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
    parser.add_argument("--int8", action="store_true",
                        help="quantise to int8 first (weights per output channel, "
                             "activations per tensor, calibrated on training images of "
                             "--dataset) and export that: needs a model of MNIST's 784 "
                             "pixels")
    parser.add_argument("--calibration", type=positive_int, metavar="N",
                        help=f"with --int8: calibrate on N training images drawn at random "
                             f"(seed 0), at least {MIN_CALIBRATION_ROWS} (default: "
                             f"{DEFAULT_CALIBRATION_ROWS})")
    parser.add_argument("--dataset", metavar="NAME", type=dataset_name,
                        help="with --int8: the dataset whose training images calibrate it "
                             "(default: the model's, else mnist)")
    parser.add_argument("--data", metavar="DIR",
                        help="with --int8: folder holding the dataset's IDX files (raw or "
                             ".gz); default: $MNISTNET_DATA (MNIST) or "
                             "$MNISTNET_DATASETS/<dataset>, else the per-user cache, else "
                             "download")
    return parser


def _check_int8_options(args: argparse.Namespace) -> int:
    """The calibration rows --int8 asks for; its options refused without it."""
    if not args.int8:
        for option, value in (("--calibration", args.calibration), ("--dataset", args.dataset),
                              ("--data", args.data)):
            if value is not None:
                raise CLIError(f"{option} applies to --int8 only")
        return 0
    rows = DEFAULT_CALIBRATION_ROWS if args.calibration is None else args.calibration
    if rows < MIN_CALIBRATION_ROWS:
        raise CLIError(f"--calibration {rows}: calibrating int8 ranges needs at least "
                       f"{MIN_CALIBRATION_ROWS} images (default {DEFAULT_CALIBRATION_ROWS})")
    return rows


def _calibration_images(model: Model, path: str, rows: int, data: str | None,
                        name: str) -> np.ndarray:
    """`rows` training images of dataset `name` drawn at random (seed 0), for a model that
    takes them and can be quantised (both checked before the images are read): uint8 pixels
    as stored for a model that starts with a Rescaling, else float32 in [0, 1]."""
    if model.input_dim != MNIST_PIXELS:
        raise CLIError(f"{path} takes inputs of shape {tuple(model.input_shape)}, and --int8 "
                       f"calibrates on MNIST images ({MNIST_PIXELS} pixels): quantise it in "
                       "Python, mnistnet.quantize(model, x_calibration), with rows of its own")
    check_fits(model, name)
    check_quantizable(model)
    (x_train, _), _ = load_dataset(name, data, pixels=model.plan.takes_pixels)
    if rows > len(x_train):
        raise CLIError(f"--calibration {rows}: the training set has {len(x_train)} images")
    return calibration_sample(x_train, rows)


def _report_int8(q: QuantizedModel, name: str) -> str:
    sizes = c_sizes(q)
    images = "MNIST" if name == "mnist" else name
    return (f"int8: calibrated on {q.calibration_rows} {images} training images; constants "
            f"{sizes['weights_bytes']:,} bytes (float32 weights: {q.float_weight_bytes:,}), "
            f"layer buffers {sizes['scratch_bytes']:,} bytes")


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
    rows = _check_int8_options(args)
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
    exported: QuantizedModel | None = None
    dataset = args.dataset or model.dataset or "mnist"
    if args.int8:
        exported = quantize(model, _calibration_images(model, args.model, rows, args.data,
                                                       dataset))
    if args.onnx is not None:
        path = (exported.export_onnx(args.onnx, opset) if exported is not None
                else export_onnx(model, args.onnx, opset))
        print(f"wrote {path}: {onnx_signature(model)}")
    if args.c_dir is not None:
        header, source = (exported.export_c(args.c_dir, name) if exported is not None
                          else export_c(model, args.c_dir, name))
        print(f"wrote {header} and {source}: {c_signature(model, name)}")
    if exported is not None:
        print(_report_int8(exported, dataset))
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
