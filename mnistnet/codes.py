"""The numbers both backends agree on: activation, loss and optimizer codes, why an epoch
stopped, the layouts of the records that cross to the compiled side (one layer of the plan,
the optimizer's settings), and the geometry of a sliding window.

A neutral module: it imports nothing of mnistnet, and everything that needs these numbers
(the compiled kernels' Python face `mnistnet.fast`, the NumPy twin `mnistnet.reference`, the
plan, the layers, the optimizers) takes them from here. The compiled side declares the same
codes and structs in `_kernels.pxd`; `mnistnet.fast` checks them against these at import.
The layer kinds' codes are the table's: see mnistnet.kinds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ACTIVATIONS = {"linear": 0, "sigmoid": 1, "relu": 2, "softmax": 3, "tanh": 4}
LOSSES = {"mse": 0, "categorical_crossentropy": 1}
OPTIMIZERS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 3, "rmsprop": 4}
# Why an epoch stopped: completed; a batch's loss or update was NaN/Inf (not applied);
# Ctrl-C; a batch's input rows held NaN/Inf (checked as they are read).
EPOCH_DONE, EPOCH_NONFINITE_LOSS, EPOCH_INTERRUPTED, EPOCH_NONFINITE_INPUT = 0, 1, 2, 3
# Keras' clip for cross-entropy: probabilities are kept in [EPS, 1 - EPS] before the log.
CE_EPSILON = np.float32(1e-7)

# ---- one layer of the plan: the C struct LayerPlan in _kernels.pxd -------------------------
# These fields, in this order, each 8 bytes (Py_ssize_t, and a double for the floats).
PLAN_FIELDS = (
    "kind", "act",
    "in_h", "in_w", "in_c", "out_h", "out_w", "out_c",
    "k_h", "k_w", "s_h", "s_w", "pad_top", "pad_left",
    "n_in", "n_out",          # floats per sample in and out
    "gemm_rows", "fan_in",    # dense/conv as a GEMM: rows per sample (out_h*out_w) and K
    "param", "n_param",       # kernel offset in the parameter block; kernel + bias size
    "act_in", "act_out",      # per-sample offsets in the activation block
    "scratch", "n_scratch",   # forward scratch in the activation block (per sample)
    "dact_in", "dact_out",    # per-sample offsets in the gradient block, -1: none
    "wt",                     # a thread's workspace: the kernel transposed, -1: none
    "n_train",                # trainable parameters: the optimizer's part of n_param
    "stats",                  # BatchNormalization: its mean, variance and 1/std in the
                              # shared statistics area, 3 * out_c floats (-1: none)
    "shift_h0", "shift_h1",   # RandomTranslation: the lowest and highest shift down ...
    "shift_w0", "shift_w1",   # ... and right, in pixels
    "rate",                   # Dropout's rate
    "l2",                     # the kernel's L2 regularisation factor (0: none)
    "fill",                   # RandomTranslation's fill value
    "momentum", "epsilon",    # BatchNormalization's
    "scale", "offset",        # Rescaling's
)
PLAN_FLOAT_FIELDS = ("rate", "l2", "fill", "momentum", "epsilon", "scale", "offset")
PLAN_DTYPE = np.dtype([(name, np.float64 if name in PLAN_FLOAT_FIELDS else np.int64)
                       for name in PLAN_FIELDS])

# ---- the optimizer's settings: the C struct OptimizerSettings in _kernels.pxd --------------
OPTIMIZER_FIELDS = (
    "code",                   # OPTIMIZERS
    "momentum",               # SGD's and RMSprop's
    "nesterov",               # SGD's (0 or 1)
    "beta_1", "beta_2",       # Adam's and AdamW's
    "epsilon",                # Adam's, AdamW's and RMSprop's
    "rho",                    # RMSprop's
    "centered",               # RMSprop's (0 or 1)
    "weight_decay",           # AdamW's
    "use_ema",                # any optimizer's (0 or 1): Keras 3's moving average of weights
    "ema_momentum",           # its momentum
    "ema_overwrite_frequency",  # write the average into the weights every this many steps
                              # (0: never; Keras' None)
    "ema_slot",               # the average's block of state: after the optimizer's own
)
OPTIMIZER_INT_FIELDS = ("code", "nesterov", "centered", "use_ema", "ema_overwrite_frequency",
                        "ema_slot")
OPTIMIZER_DTYPE = np.dtype([(name, np.int64 if name in OPTIMIZER_INT_FIELDS else np.float64)
                            for name in OPTIMIZER_FIELDS])


def optimizer_settings(code: str, **values: Any) -> np.ndarray:
    """One OPTIMIZER_DTYPE record (a 0-d structured array) for the optimizer named `code`
    (a key of OPTIMIZERS), the fields not given 0; with use_ema, ema_slot is set."""
    unknown = set(values) - set(OPTIMIZER_FIELDS) | ({"ema_slot"} & set(values))
    if unknown:
        raise ValueError(f"unknown optimizer settings {sorted(unknown)}")
    record = np.zeros((), dtype=OPTIMIZER_DTYPE)
    record["code"] = OPTIMIZERS[code]
    for name, value in values.items():
        record[name] = value
    record["ema_slot"] = _own_slots(record)
    return record


def _own_slots(settings: np.ndarray) -> int:
    """The optimizer's own blocks of state: none for SGD, the velocity for momentum, Adam's
    two moments, RMSprop's average of squares then its momentum (if momentum > 0) then its
    average gradient (if centered)."""
    code = int(settings["code"])
    if code == OPTIMIZERS["rmsprop"]:
        return 1 + int(settings["momentum"] > 0) + int(bool(settings["centered"]))
    return {OPTIMIZERS["sgd"]: 0, OPTIMIZERS["momentum"]: 1, OPTIMIZERS["adam"]: 2,
            OPTIMIZERS["adamw"]: 2}[code]


def optimizer_slots(settings: np.ndarray) -> int:
    """Blocks of optimizer state, each with the parameters' layout, that the settings need:
    the optimizer's own (_own_slots), then with use_ema the moving average of the weights
    (block ema_slot). The one statement of this rule."""
    return _own_slots(settings) + int(bool(settings["use_ema"]))


def dropout_threshold(rate: float) -> int:
    """Dropout keeps an element when the top 32 bits of its counter-based random number are
    at least this (mnistnet.reference.dropout_forward)."""
    return int(float(rate) * 4294967296.0)


# ---- windows -------------------------------------------------------------------------------

def conv2d_padded_shape(image: tuple[int, ...], kernel_size: tuple[int, int],
                        strides: tuple[int, int], padding: str) -> tuple[int, int, int]:
    """(Hs, Ws, C): what a convolution's windows read of an (H, W, C) image: the span they
    cover, padding included, when the layer pads or its windows stop short of the image's
    last rows or columns (a copy, zeros in the padding), else the image itself."""
    (oh, pt), (ow, pl) = (window_geometry(size, k, s, padding)
                          for size, k, s in zip(image[:2], kernel_size, strides, strict=True))
    span = ((oh - 1) * strides[0] + kernel_size[0], (ow - 1) * strides[1] + kernel_size[1])
    pads = pt > 0 or pl > 0 or span[0] > image[0] or span[1] > image[1]
    return (span[0], span[1], int(image[2])) if pads else tuple(int(v) for v in image)


def conv2d_grad_scratch_floats(out_hw: tuple[int, int], kernel_size: tuple[int, int],
                               strides: tuple[int, int], in_c: int, out_c: int) -> int:
    """Floats a conv layer's input gradient needs as scratch for one image: its output
    gradient zero-padded all round by the kernel's size - 1 (stride 1: a direct correlation
    with the flipped kernel), else one image's patch gradient (OH*OW x KH*KW*C, before
    col2im)."""
    (oh, ow), (kh, kw) = out_hw, kernel_size
    if strides == (1, 1):
        return (oh + 2 * (kh - 1)) * (ow + 2 * (kw - 1)) * out_c
    return oh * ow * kh * kw * in_c


def window_geometry(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) of a window sliding along one axis of `size`, as Keras
    (TensorFlow) computes them: "valid" keeps the windows inside the input; "same" gives
    ceil(size / stride) outputs, the padding split with any extra one after. Raises if a
    "valid" window is larger than the input."""
    if padding == "valid":
        if window > size:
            raise ValueError(f"window {window} is larger than its input {size} "
                             "(padding='valid'); use a smaller window or padding='same'")
        return (size - window) // stride + 1, 0
    if padding != "same":
        raise ValueError(f"unknown padding {padding!r}; valid: valid, same")
    out = -(-size // stride)
    return out, max((out - 1) * stride + window - size, 0) // 2
