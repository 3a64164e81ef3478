"""What fit, predict and evaluate accept: checks and conversions of x and y.

x becomes a C-contiguous float32 (n, features) array the kernels may read, or, for a model
whose first layer is Rescaling, a C-contiguous uint8 one (pixels as they are: the kernels turn
each row into floats as they read it); y becomes float32 (n, outputs) targets. Every refusal
names the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mnistnet import fast
from mnistnet.layers import Shape


def _accepted_shapes(input_shape: Shape) -> list[Shape]:
    """The per-sample shapes x may have: input_shape itself, flattened, and for one-channel
    images without the channel axis."""
    dim = int(np.prod(input_shape))
    shapes = [tuple(input_shape)]
    if len(input_shape) > 1:
        shapes.append((dim,))
    if len(input_shape) == 3 and input_shape[2] == 1:
        shapes.append(tuple(input_shape[:2]))
    return shapes


def as_features(x: Any, input_shape: Shape | int, name: str = "x",
                check_finite: bool = True, pixels: bool = False) -> np.ndarray:
    """x as a C-contiguous float32 (n, prod(input_shape)) array of flattened samples the
    kernels may read. For input_shape (28, 28, 1), x may be (n, 28, 28, 1), (n, 28, 28) or
    (n, 784); for (784,), (n, 784).

    float32 is used as is when C-contiguous (else copied); other float dtypes are converted
    once. pixels: the model's first layer is Rescaling, so uint8 x is taken as it is (a
    C-contiguous uint8 array comes back, never a float copy). Other integer images are
    refused rather than guessed at: the message says to add Rescaling(1/255) or to scale
    them, e.g. `x.astype(np.float32) / 255`. NaN or Inf is an error (unless check_finite is
    False: for a caller whose kernels check the rows as they read them)."""
    input_shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else input_shape
    input_shape = tuple(int(v) for v in input_shape)
    dim = math.prod(input_shape)
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError as exc:
                raise ValueError(f"{name} is not a rectangular array ({exc})") from None
        else:
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    takes_as_is = pixels and x.dtype == np.uint8
    if x.dtype.kind in "iub" and not takes_as_is:
        raise TypeError(_integer_message(name, x.dtype, pixels))
    if x.dtype.kind != "f" and not takes_as_is:
        raise TypeError(f"{name} must hold floats, got dtype {x.dtype}")
    if len(input_shape) == 1:
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n, {dim}), got shape {x.shape}")
        if x.shape[1] != dim:
            raise ValueError(f"{name} has {x.shape[1]} columns but the model's input_dim is "
                             f"{dim}")
    elif x.ndim < 1 or tuple(x.shape[1:]) not in _accepted_shapes(input_shape):
        expected = " or ".join(str((None, *s)).replace("None", "n")
                               for s in _accepted_shapes(input_shape))
        raise ValueError(f"{name} has shape {x.shape}, which does not fit the model's "
                         f"input_shape {input_shape}: expected {expected}")
    if takes_as_is:  # a view when x is contiguous: the kernels read the pixels themselves
        return np.ascontiguousarray(x.reshape(x.shape[0], dim))
    x = np.ascontiguousarray(x.reshape(x.shape[0], dim), dtype=np.float32)
    if check_finite and not fast.all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _integer_message(name: str, dtype: np.dtype, pixels: bool) -> str:
    """Why integer x is refused, and what to do instead."""
    if pixels:
        return (f"{name} has integer dtype {dtype}; the model's first layer, Rescaling, takes "
                f"uint8 pixels as they are: give uint8, or floats ({name}.astype(np.float32))")
    return (f"{name} has integer dtype {dtype} but the model's first layer is not "
            f"Rescaling: add mn.Rescaling(1/255) as its first layer (mn.preset(..., "
            f"input_dtype='uint8') does), or divide by 255: {name}.astype(np.float32) / 255")


def as_targets(y: Any, n: int, n_classes: int, name: str = "y") -> np.ndarray:
    """y as float32 (n, n_classes) targets: from integer labels (n,) in 0..n_classes-1, or
    from one-hot (or probability) rows (n, n_classes)."""
    try:
        y = np.asarray(y)
    except ValueError as exc:
        raise ValueError(f"{name} is not a rectangular array ({exc})") from None
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and n_classes > 1):
        y = y.reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{name} has {y.shape[0]} labels but x has {n} rows")
        if y.dtype.kind not in "iu":
            if y.dtype.kind != "f" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise TypeError(f"{name} as 1-D labels must hold integers, got dtype {y.dtype}")
        if n and y.min() < 0:
            raise ValueError(f"{name} has labels outside 0..{n_classes - 1} "
                             f"(min {y.min()}, max {y.max()})")
        if n and y.max() >= n_classes:
            raise ValueError(f"{name} has labels up to {y.max()} but the model has "
                             f"{n_classes} output{'s' if n_classes != 1 else ''} (labels "
                             f"0..{n_classes - 1}): its last layer needs {int(y.max()) + 1} "
                             "units")
        targets = np.zeros((n, n_classes), dtype=np.float32)
        targets[np.arange(n), y.astype(np.int64)] = 1
        return targets
    if y.ndim != 2:
        raise ValueError(f"{name} must be labels (n,) or one-hot (n, {n_classes}), "
                         f"got shape {y.shape}")
    if y.shape[1] != n_classes:
        raise ValueError(f"{name} is one-hot with {y.shape[1]} columns but the model has "
                         f"{n_classes} outputs")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} rows but x has {n}")
    if y.dtype.kind not in "iubf":
        raise TypeError(f"{name} must be numeric, got dtype {y.dtype}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not fast.all_finite(y):
        raise ValueError(f"{name} contains NaN or Inf")
    return y
