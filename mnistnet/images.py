"""A picture of a digit made into an MNIST digit, as MNIST's were made: grey, light ink on a
dark background, cropped to the ink, scaled into 20x20 keeping its aspect ratio, and centred
by its centre of mass in 28x28. Pictures (PNG, JPEG) are read through Pillow, the optional
extra ``pip install "mnistnet[image]"``, imported when a picture is read.

    from mnistnet import images
    digit = images.load_digit("digit.png")        # float32 (28, 28) in [0, 1]
    model.predict(digit.reshape(1, -1))

prepare_digit is the demo page's preprocessDigit (mnistnet/demo_static/demo.js) step for
step, down to its rounding: tests/test_demo.py holds the two to the same output on the same
drawing in headless Chromium. `mnistnet predict digit.png` uses load_digit.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

__all__ = ["load_digit", "prepare_digit", "read_picture", "save_preview"]

SIDE = 28  # MNIST's images are 28x28 ...
BOX = 20  # ... each digit scaled to fit 20x20, keeping its aspect ratio
INK = 0.05  # fainter pixels (antialiased rims, paper grain) do not widen the crop
INSTALL_HINT = 'reading PNG and JPEG pictures needs Pillow: pip install "mnistnet[image]"'

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- the preparation


def prepare_digit(gray: np.ndarray) -> np.ndarray:
    """A drawing made into an MNIST digit: cropped to its ink's bounding box (pixels of at
    least 0.05), scaled (keeping its aspect ratio, each new pixel the mean of the area it
    covers) to fit 20x20, and placed in 28x28 with its centre of mass at pixel (14, 14),
    kept inside the image.

    Args:
        gray: (height, width) grey levels, 0 background and 1 ink.

    Returns:
        float32 (28, 28) in [0, 1]; all 0 if nothing is drawn.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2:
        raise ValueError(f"prepare_digit needs a 2-d array of grey levels, got shape "
                         f"{gray.shape}")
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    box = _ink_box(gray)
    if box is None:
        return out
    height, width = box[2:]
    scale = BOX / max(width, height)
    w = max(1, _round_half_up(width * scale))
    h = max(1, _round_half_up(height * scale))
    digit = _resample(gray, box, h, w)
    cy, cx = _centre_of_mass(digit)
    # MNIST's digits have their centre of mass at pixel (14, 14); a lopsided one would leave
    # the image that way, so it is kept inside.
    x0 = min(max(_round_half_up(SIDE / 2 - cx), 0), SIDE - w)
    y0 = min(max(_round_half_up(SIDE / 2 - cy), 0), SIDE - h)
    out[y0:y0 + h, x0:x0 + w] = np.minimum(digit, 1)
    return out


def _round_half_up(value: float) -> int:
    """JavaScript's Math.round (halves up, -2.5 -> -2), not Python's round (halves to even)."""
    return math.floor(value + 0.5)


def _ink_box(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the pixels of at least INK, or None where there are
    none."""
    ink = gray >= INK
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if len(rows) == 0:
        return None
    return (int(rows[0]), int(columns[0]), int(rows[-1] - rows[0] + 1),
            int(columns[-1] - columns[0] + 1))


def _coverage(length: int, count: int) -> np.ndarray:
    """(count, length) weights: how `count` cells cut `length` pixels into equal parts, each
    row the shares of the pixels its cell covers (a row adds up to 1)."""
    step = length / count
    weights = np.zeros((count, length))
    for cell in range(count):
        start = cell * step
        end = length if cell == count - 1 else start + step  # no rounding past the box
        for pixel in range(math.floor(start), math.ceil(end)):
            overlap = min(end, pixel + 1) - max(start, pixel)
            if overlap > 0:
                weights[cell, pixel] = overlap / step
    return weights


def _resample(gray: np.ndarray, box: tuple[int, int, int, int], height: int,
              width: int) -> np.ndarray:
    """The box scaled to height x width, each new pixel the mean of the area it covers: grey
    levels along the edges, as MNIST's anti-aliased digits have. float32, as the page's."""
    top, left, box_height, box_width = box
    crop = gray[top:top + box_height, left:left + box_width].astype(np.float64)
    rows, columns = _coverage(box_height, height), _coverage(box_width, width)
    return (rows @ crop @ columns.T).astype(np.float32)


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the centre of mass, in pixels counted from 0."""
    values = image.astype(np.float64)
    mass = values.sum()
    rows, columns = np.indices(image.shape)
    return float((rows * values).sum() / mass), float((columns * values).sum() / mass)


# --------------------------------------------------------------------------- pictures


def _pillow() -> Any:
    """PIL.Image and PIL.ImageOps, or ImportError naming the extra to install."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return Image, ImageOps


def read_picture(path: PathLike) -> np.ndarray:
    """A picture (PNG, JPEG, or another format Pillow reads) as float32 (height, width) grey
    levels in [0, 1], ink 1 and background 0, as the demo page's pad is:

    - turned upright as the camera recorded (EXIF orientation);
    - transparent parts shown on white, as image viewers and web pages show them;
    - grey by Pillow's luma (ITU-R 601-2);
    - inverted if dark on light (the median pixel, the background, is light);
    - levels stretched so that the background is 0 and the strongest ink 1 (a photo's grey
      paper and pencil); a clean drawing is left as it is.
    """
    image_module, image_ops = _pillow()
    try:
        with image_module.open(path) as picture:
            picture = image_ops.exif_transpose(picture)
            levels = np.asarray(_on_white(image_module, picture).convert("L"), dtype=np.int32)
    except (image_module.UnidentifiedImageError, OSError, SyntaxError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{os.fspath(path)}: not a picture Pillow can read ({exc})") from None
    if np.median(levels) > 127.5:  # a light background: dark ink on paper
        levels = 255 - levels
    return _stretched(levels)


def _on_white(image_module: Any, picture: Any) -> Any:
    """The picture with its transparent parts laid on white."""
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = image_module.new("RGBA", rgba.size, (255, 255, 255, 255))
        return image_module.alpha_composite(white, rgba)
    return picture


def _stretched(levels: np.ndarray) -> np.ndarray:
    """0..255 levels as 0..1, the background (the median) at 0 and the strongest ink at 1.
    A drawing on black with white ink is exactly levels / 255, as the page reads its pad."""
    background, ink = float(np.median(levels)), float(levels.max())
    if ink <= background:  # nothing but background
        return np.zeros(levels.shape, dtype=np.float32)
    stretched = (np.maximum(levels - background, 0)) / (ink - background)
    return stretched.astype(np.float32)


def load_digit(path: PathLike) -> np.ndarray:
    """A picture of a digit as the network should see it: float32 (28, 28) in [0, 1],
    read_picture then prepare_digit."""
    return prepare_digit(read_picture(path))


def save_preview(digit: np.ndarray, path: PathLike) -> None:
    """Write a prepared digit as the 28x28 greyscale PNG the network sees (white ink on
    black, as MNIST; `mnistnet predict` reads it back to the same digit)."""
    image_module, _ = _pillow()
    pixels = np.round(np.clip(digit, 0, 1) * 255).astype(np.uint8)
    image_module.fromarray(pixels).save(path, format="PNG")
