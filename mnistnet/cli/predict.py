"""``mnistnet predict``: classify images (PNG and JPEG pictures, IDX, .npy, binary PGM) with
a saved model."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from mnistnet import images
from mnistnet.cli.common import (
    EXIT_OK,
    CLIError,
    add_backend,
    check_output_path,
    dataset_name,
    load_model,
    name_classes,
    one_line,
)
from mnistnet.data import read_idx
from mnistnet.model import Model

NAME = "predict"
HELP = "classify images with a saved model"
DESCRIPTION = ("Print one line per image: 'FILE[i]: digit D (p=P)' for a model of digits, "
               "'FILE[i]: NAME (p=P)' for one of other classes (its class names, e.g. "
               "'Trouser'), the class being the output with the largest value P. A picture "
               "of a digit (PNG or JPEG: a drawing, a photo) is prepared as MNIST's digits "
               "were, and as the demo page prepares a drawing: grey, inverted if dark on "
               "light, cropped to the ink, scaled into 20x20 and centred by its centre of "
               "mass in 28x28. The other files hold images that look like the dataset's "
               "already: light on a dark background (0 = black), 28x28 for the MNIST family.")
EPILOG = ("Accepted files: PNG and JPEG pictures of any size (needs Pillow: pip install "
          "\"mnistnet[image]\"); IDX images (raw or .gz; (n, 28, 28) or (28, 28)); .npy "
          "arrays of shape (28, 28), (n, 28, 28) or (n, 784); binary PGM (P5, maxval <= 255), "
          "used as they are. uint8 pixels are divided by 255 (PGM: by its maxval); float arrays "
          "are used as they are, and should lie in [0, 1]. A model that starts with a "
          "Rescaling layer gets uint8 pixels as they are (the others times 255).")
PGM_MAX_HEADER = 4096  # bytes; a P5 header is a few dozen bytes plus optional comments
_PGM_WHITESPACE = b" \t\n\r\v\f"
_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"
_PICTURE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_arguments(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``mnistnet predict``."""
    sub.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    sub.add_argument("files", metavar="FILE", nargs="+", help="image files to classify")
    sub.add_argument("--dataset", metavar="NAME", type=dataset_name,
                     help="whose class names to print, for a model file saved without them "
                          "(older ones: its outputs are then named 0, 1, ...)")
    sub.add_argument("--show", metavar="PATH.png",
                     help="save what the network sees of a picture (the prepared 28x28 "
                          "digit, white on black) as a PNG here; one picture only")
    add_backend(sub)
    return sub


def run(args: argparse.Namespace) -> int:
    """Print "FILE[i]: digit D (p=P)" (or the class's name) for every image of every file."""
    if args.show is not None:
        _check_one_picture(args.files)
        check_output_path("--show", args.show)
    model = load_model(args.model, args.backend)
    name_classes(model, args.dataset)
    pixels = model.plan.takes_pixels
    batches = [(name, read_images(name, model.input_dim, pixels)) for name in args.files]
    for name, x in batches:
        try:
            outputs = model.predict(x)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{name}: {exc}") from None
        classes = np.argmax(outputs, axis=1)
        for i, c in enumerate(classes):
            print(f"{name}[{i}]: {reading(model, c)} (p={outputs[i, c]:.3f})")
    if args.show is not None:
        seen = batches[0][1] / np.float32(255) if pixels else batches[0][1]  # in [0, 1]
        save_preview(seen.reshape(images.SIDE, images.SIDE), args.show)
        print(f"saved what the network sees to {args.show}")
    return EXIT_OK


def reading(model: Model, c: int) -> str:
    """How an answer is said: "digit 7" for a model of digits, else the class's name."""
    return f"digit {c}" if model.reads_digits else model.class_names[c]


def _check_one_picture(files: list[str]) -> None:
    """--show needs exactly one FILE, a PNG or JPEG picture."""
    if len(files) != 1 or _file_kind(files[0]) != "picture":
        raise CLIError("--show saves what the network sees of one picture: give one PNG or "
                       f"JPEG file (got {', '.join(files)})")


def _file_kind(path: str) -> str:
    with open(path, "rb") as stream:
        head = stream.read(len(_PICTURE_MAGICS[0]))
    return _image_kind(path, head)


def read_images(path: str, input_dim: int, pixels: bool = False) -> np.ndarray:
    """Rows (n, input_dim) from a PNG or JPEG picture (prepared as MNIST's digits were, see
    mnistnet.images), an IDX, .npy or binary PGM file: float32 in [0, 1] for integer pixels,
    the file's own floats otherwise; or, for a model that starts with a Rescaling (pixels),
    uint8 pixels as they are and the others in 0..255. Raises CLIError naming the file."""
    kind = _file_kind(path)
    if kind == "picture":
        digit = _read_picture(path, input_dim)
        return digit * np.float32(255) if pixels else digit
    if kind == "pgm":
        return _read_pgm(path, input_dim, pixels)
    array = _read_npy(path) if kind == "npy" else read_idx(path)
    return _as_rows(array, path, input_dim, pixels)


def _read_picture(path: str, input_dim: int) -> np.ndarray:
    """A picture as the (1, 784) row of the MNIST digit made of it."""
    if input_dim != images.SIDE * images.SIDE:
        raise CLIError(f"{path}: a picture is made into a {images.SIDE}x{images.SIDE} digit, "
                       f"and this model takes {input_dim} inputs")
    try:
        return images.load_digit(path).reshape(1, input_dim)
    except ImportError as exc:
        raise CLIError(str(exc)) from None


def save_preview(digit: np.ndarray, path: str) -> None:
    try:
        images.save_preview(digit, path)
    except ImportError as exc:
        raise CLIError(str(exc)) from None


def _image_kind(path: str, head: bytes) -> str:
    """"picture", "npy", "pgm" or "idx": from the file name's suffix, else from the first
    bytes."""
    suffix = Path(path).suffix.lower()
    if suffix in _PICTURE_SUFFIXES or head.startswith(_PICTURE_MAGICS):
        return "picture"
    if suffix == ".npy" or head.startswith(_NPY_MAGIC):
        return "npy"
    if suffix in (".pgm", ".pnm") or head.startswith(b"P"):
        return "pgm"
    if head.startswith((_GZIP_MAGIC, b"\x00\x00")):
        return "idx"
    if not head:
        raise CLIError(f"{path}: empty file")
    raise CLIError(f"{path}: not an image file this command reads (PNG, JPEG, IDX, .npy or "
                   "binary PGM)")


def _read_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise CLIError(f"{path}: not a readable .npy array ({one_line(str(exc))})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise CLIError(f"{path}: an .npz archive, not a .npy array")
    return array


def _as_rows(array: np.ndarray, path: str, input_dim: int, pixels: bool) -> np.ndarray:
    """(side, side), (n, side, side), (n, input_dim) or (input_dim,) -> (n, input_dim)."""
    shape = array.shape
    if array.ndim == 1 and shape[0] == input_dim:
        rows = array.reshape(1, input_dim)
    elif array.ndim == 2 and shape[1] == input_dim:
        rows = array
    elif array.ndim == 2 and shape[0] * shape[1] == input_dim:
        rows = array.reshape(1, input_dim)
    elif array.ndim == 3 and shape[1] * shape[2] == input_dim:
        rows = array.reshape(shape[0], input_dim)
    else:
        raise CLIError(f"{path}: images of shape {shape} do not fit the model's {input_dim} "
                       f"inputs (expected {_expected_shapes(input_dim)})")
    if rows.shape[0] == 0:
        raise CLIError(f"{path}: no images (shape {shape})")
    return _scaled(rows, path, pixels)


def _expected_shapes(input_dim: int) -> str:
    side = math.isqrt(input_dim)
    if side * side == input_dim:
        return f"({side}, {side}), (n, {side}, {side}) or (n, {input_dim})"
    return f"(rows, cols) with rows * cols = {input_dim}, (n, rows, cols) or (n, {input_dim})"


def _scaled(rows: np.ndarray, path: str, pixels: bool, maxval: int = 255) -> np.ndarray:
    """Rows in [0, 1]; for a model that starts with a Rescaling (pixels), in 0..255 (uint8
    ones as they are)."""
    if rows.dtype == np.uint8:
        if pixels and maxval == 255:
            return rows
        unit = rows.astype(np.float32) / np.float32(maxval)
        return unit * np.float32(255) if pixels else unit
    if rows.dtype.kind == "f":
        return rows * np.float32(255) if pixels else rows
    raise CLIError(f"{path}: pixels of type {rows.dtype} are not supported "
                   "(expected uint8 or floating point)")


def _read_pgm(path: str, input_dim: int, pixels: bool = False) -> np.ndarray:
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
    values = np.frombuffer(payload, dtype=np.uint8)
    if int(values.max()) > maxval:
        raise CLIError(f"{path}: pixel value {int(values.max())} exceeds the maxval {maxval}")
    return _scaled(values.reshape(1, input_dim), path, pixels, maxval)


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
