"""int8 post-training static quantisation, TensorFlow Lite's scheme, and its NumPy twin.

    import mnistnet as mn
    q = mn.quantize(model, x_train[:1000])       # calibrated on 1,000 training images
    q.predict(x_test)                            # float outputs, as model.predict gives them
    q.predict_int8(q.quantize_input(x_test))     # the int8 outputs, as the generated C, to the bit
    q.export_c("firmware/", "digits")            # digits.h and digits.c (mnistnet.export_int8)
    q.export_onnx("digits_int8.onnx")            # QDQ graph (mnistnet.export_int8_onnx)

The scheme is the TensorFlow Lite quantisation spec
(https://ai.google.dev/edge/litert/models/quantization_spec):

* a real value r is held as an int8 q with r = scale * (q - zero_point);
* weights: symmetric (zero point 0) in [-127, 127], one scale per output channel, max|w| / 127;
* activations (the input and each layer's output): one scale and zero point per tensor, from
  the least and greatest value the float model gives on the calibration images (the range
  widened to hold 0, so that 0 is exact);
* biases: int32 with the scale input_scale * weight_scale[c] and zero point 0;
* a Dense or Conv2D sums (q_in - zp_in) * q_w onto its bias in int32, then requantises the sum
  to its output's scale with an integer multiplier and shift per output channel (TFLite's
  QuantizeMultiplier of input_scale * weight_scale[c] / output_scale), rounded as CMSIS-NN's
  arm_nn_requantize rounds (see `requantize`), adds the output zero point and clamps to int8;
  a fused ReLU is that clamp starting at the zero point;
* max pooling compares int8 values; average pooling rounds each window's sum as TFLite's int8
  AveragePool does (see `average_pool2d_int8`); both keep their input's scale and zero point,
  as TFLite requires;
* a hidden tanh or sigmoid is a look-up table, as TFLite's int8 Tanh and Logistic kernels do
  it: an int8 input has 256 values, so 256 int8 outputs computed at quantisation time from
  the float function (see `lookup_table`) say what each becomes; the output's scale and zero
  point are the ones TFLite fixes (tanh: 1/128 and 0, sigmoid: 1/256 and -128), whatever
  the calibration; the input's are those of the layer computing it (its pre-activation
  range);
* a BatchNormalization right after a Dense or Conv2D with a linear activation is folded into
  that layer's kernel and bias, and an Activation("relu") right after one fuses into its clamp;
* the last layer's softmax, sigmoid or tanh runs in float on the dequantised outputs: the int8
  outputs are the logits (their argmax is the predicted class);
* a Rescaling(scale, offset) is folded: as the first layer, into the input's quantisation
  (the input is quantised as it comes, e.g. pixels 0..255, with scale S / scale and the zero
  point of the rescaled input shifted by offset / S, rounded to a whole step: exact for
  offset 0), and right after a Dense or Conv2D with a linear activation, into its kernel
  and bias as BatchNormalization is.

The functions below are the twin of the generated C (mnistnet.export_int8): integer
arithmetic in NumPy, int64 where the C uses 64-bit intermediates. Sums of int8 products are
computed as float64 matrix products: each is an integer far below 2^53, so float64 holds it
exactly and BLAS does the work (`exact_matmul` checks the bound).

A model's layers are lowered through a table keyed by the layer's class name (LOWERINGS):
each entry turns one layer into the operations the integer network runs (or folds it into
the previous one). A kind without an entry is an error naming the layer and the kinds that
can be quantised.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistnet import reference
from mnistnet.codes import window_geometry
from mnistnet.export import LayerStep, describe_model, layer_steps
from mnistnet.layers import Shape

if TYPE_CHECKING:
    from mnistnet.model import Model

__all__ = ["DEFAULT_CALIBRATION_ROWS", "MIN_CALIBRATION_ROWS", "QParams", "QuantizationError",
           "QuantizedLayer", "QuantizedModel", "calibration_sample", "check_quantizable",
           "export_int8_c", "quantize"]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
WEIGHT_MAX = 127  # symmetric weights: -128 is never used, as the TFLite spec asks
DEFAULT_CALIBRATION_ROWS = 1000
# Fewer images give ranges too narrow for the images the model meets later (they saturate).
MIN_CALIBRATION_ROWS = 100
MAX_LEFT_SHIFT = 30  # effective scales up to 2^30: larger ones mean a broken calibration
CHUNK = 64  # rows per step of the twin and of the calibration (bounds their memory)
EXACT_FLOAT64 = 2**53  # every integer below this is a float64


# ---- the arithmetic ------------------------------------------------------------------------

def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """x rounded to the nearest integer, halves away from zero (C's round(), TFLite's
    TfLiteRound), as float64; exact for float32 and float64 inputs."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))


@dataclass(frozen=True)
class QParams:
    """How a tensor is held in int8: real = scale * (q - zero_point)."""

    scale: float  # a float32 value (the C reads it as a float)
    zero_point: int

    @classmethod
    def from_range(cls, low: float, high: float) -> QParams:
        """The scale and zero point spreading [min(low, 0), max(high, 0)] over the 256 int8
        values, the zero point nudged to an integer (TFLite's ChooseQuantizationParams).
        A tensor that is 0 on every calibration image gets scale 1."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"cannot quantise a tensor ranging over [{low}, {high}]: the "
                             "float model gives non-finite values on the calibration images")
        if high == low:
            return cls(1.0, 0)
        scale = float(np.float32((high - low) / (INT8_MAX - INT8_MIN)))
        zero_point = int(np.clip(round_half_away(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
        return cls(scale, zero_point)


def quantize_values(x: np.ndarray, q: QParams) -> np.ndarray:
    """x (float32) as int8: round(x / scale) + zero_point, clamped to [-128, 127], exactly
    as the generated C quantises its float input (the division in float32, halves rounded
    away from zero, NaN to -128)."""
    v = np.asarray(x, dtype=np.float32) / np.float32(q.scale)
    low, high = INT8_MIN - q.zero_point, INT8_MAX - q.zero_point
    v = np.where(v >= low, v, np.float32(low))  # NaN fails the comparison: the low end
    v = np.minimum(v, np.float32(high))
    return (round_half_away(v) + q.zero_point).astype(np.int8)


def dequantize_values(q_values: np.ndarray, q: QParams) -> np.ndarray:
    """scale * (q - zero_point) in float32, as the generated C computes it."""
    diff = (np.asarray(q_values, dtype=np.int32) - q.zero_point).astype(np.float32)
    return np.float32(q.scale) * diff


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """(multiplier, shift) with scale ~= multiplier * 2^(shift - 31), multiplier in
    [2^30, 2^31): TensorFlow Lite's QuantizeMultiplier (quantization_util.cc). A scale so small
    that shift would drop below -31 gives (0, 0): the product is then 0. Scales of 2^30 or more
    are refused (they would shift the sum left past 31 bits)."""
    scale = float(scale)
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"a requantisation scale must be finite and >= 0, got {scale}")
    if scale == 0.0:
        return 0, 0
    fraction, shift = math.frexp(scale)  # scale = fraction * 2^shift, fraction in [0.5, 1)
    multiplier = int(round_half_away(fraction * 2**31))  # exact: a power-of-two multiple
    if multiplier == 2**31:  # the fraction rounded up to 1
        multiplier //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > MAX_LEFT_SHIFT:
        raise ValueError(f"requantisation scale {scale:g} is too large (at most 2^"
                         f"{MAX_LEFT_SHIFT}): a layer's output range is tiny next to its "
                         "inputs'; calibrate on more (and more varied) images")
    return multiplier, shift


def requantize(acc: np.ndarray, multiplier: np.ndarray | int,
               shift: np.ndarray | int) -> np.ndarray:
    """acc * multiplier * 2^(shift - 31), rounded as CMSIS-NN's arm_nn_requantize (Include/
    arm_nnsupportfunctions.h, V.22.0.0 of April 2024; its default path, with
    CMSIS_NN_USE_SINGLE_ROUNDING unset), computed in int64 on int32 values:

    1. a left shift by max(shift, 0): acc * 2^left. CMSIS-NN lets this overflow int32
       (undefined in C); here it saturates to int32, which changes nothing the clamp to int8
       that follows keeps (such a sum saturates the output either way);
    2. arm_nn_doubling_high_mult_no_sat: (x * multiplier + 2^30) >> 31, an arithmetic shift:
       x * multiplier / 2^31 rounded to nearest, halves up (towards plus infinity);
    3. arm_nn_divide_by_power_of_two by 2^right, right = max(-shift, 0): rounded to nearest,
       halves away from zero.

    acc, multiplier and shift broadcast (per output channel: the last axis)."""
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = np.clip(acc << left, INT32_MIN, INT32_MAX) if left.any() else acc  # (the usual case)
    high = (x * np.asarray(multiplier, dtype=np.int64) + (1 << 30)) >> 31  # NumPy's >> floors
    mask = (np.int64(1) << right) - 1
    remainder = high & mask
    result = high >> right
    threshold = (mask >> 1) + (result < 0)
    return result + (remainder > threshold)


def to_int8(values: np.ndarray, zero_point: int, low: int = INT8_MIN) -> np.ndarray:
    """values + zero_point clamped to [low, 127] as int8: a requantised sum as a layer's
    output (low is the zero point under a fused ReLU, else -128)."""
    return np.clip(np.asarray(values, dtype=np.int64) + zero_point, low, INT8_MAX).astype(
        np.int8)


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for integer-valued arrays, exactly, as int64: through float64 BLAS, exact while
    every partial sum stays below 2^53. Here a holds int8 values minus a zero point (|a| <=
    255) and b int8 weights (|b| <= 127): the sums stay below K * 255 * 127, checked."""
    if a.shape[-1] * (INT8_MAX - INT8_MIN) * WEIGHT_MAX >= EXACT_FLOAT64:
        raise ValueError(f"sums of {a.shape[-1]} int8 products may exceed float64's exact range")
    return (np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64)).astype(np.int64)


def _centred(x: np.ndarray, zero_point: int) -> np.ndarray:
    """x - zero_point, exact, as float64 (what exact_matmul multiplies)."""
    return x.astype(np.float64) - zero_point


# ---- the integer kernels (the twin of the generated C) -------------------------------------

def _windows(x: np.ndarray, window: tuple[int, int], strides: tuple[int, int], padding: str,
             fill: int) -> np.ndarray:
    """(B, OH, OW, C, KH * KW): every window of x (B, H, W, C) as Keras places them, the
    padding (and only the padding) read as `fill`."""
    (kh, kw), (sh, sw) = window, strides
    (oh, top), (ow, left) = (window_geometry(size, k, s, padding)
                             for size, k, s in zip(x.shape[1:3], window, strides, strict=True))
    span_h, span_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    padded = np.full((x.shape[0], span_h, span_w, x.shape[3]), fill, dtype=x.dtype)
    rows, cols = min(x.shape[1], span_h - top), min(x.shape[2], span_w - left)
    padded[:, top: top + rows, left: left + cols] = x[:, :rows, :cols]
    view = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    view = view[:, ::sh, ::sw]  # (B, OH, OW, C, KH, KW)
    return view.reshape(*view.shape[:4], kh * kw)


def dense_int8(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, multiplier: np.ndarray,
               shift: np.ndarray, input_zero_point: int, output_zero_point: int,
               output_min: int = INT8_MIN) -> np.ndarray:
    """Dense on int8: bias + sum_i (x_i - zp_in) * kernel[i, j] in int32, requantised.
    x (B, C) int8, kernel (C, OC) int8, bias/multiplier/shift (OC,) int32."""
    acc = exact_matmul(_centred(x, input_zero_point), kernel) + bias
    return to_int8(requantize(acc, multiplier, shift), output_zero_point, output_min)


def conv2d_int8(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, multiplier: np.ndarray,
                shift: np.ndarray, input_zero_point: int, output_zero_point: int,
                strides: tuple[int, int], padding: str,
                output_min: int = INT8_MIN) -> np.ndarray:
    """Conv2D on int8 (Keras' cross-correlation, channels last): each output sums
    (x - zp_in) * kernel over its window; padding reads as x = zp_in, so it adds nothing.
    x (B, H, W, C) int8, kernel (KH, KW, C, OC) int8, bias/multiplier/shift (OC,) int32."""
    kh, kw, c, oc = kernel.shape
    patches = _windows(_centred(x, input_zero_point), (kh, kw), strides, padding, 0)
    # (B, OH, OW, C, KH*KW)
    # Keras' kernel order is (row, column, channel): the patch's axes swapped to match.
    patches = patches.swapaxes(-1, -2).reshape(*patches.shape[:3], kh * kw * c)
    acc = exact_matmul(patches, kernel.reshape(kh * kw * c, oc)) + bias
    return to_int8(requantize(acc, multiplier, shift), output_zero_point, output_min)


def max_pool2d_int8(x: np.ndarray, pool_size: tuple[int, int], strides: tuple[int, int],
                    padding: str) -> np.ndarray:
    """The greatest int8 value of each window; the padding never wins (it reads as -128, and
    every window holds at least one pixel of the image)."""
    return _windows(x, pool_size, strides, padding, INT8_MIN).max(axis=-1)


def average_pool2d_int8(x: np.ndarray, pool_size: tuple[int, int], strides: tuple[int, int],
                        padding: str) -> np.ndarray:
    """The mean of each window's int8 values over the pixels inside the image (Keras leaves
    the padding out of the average), rounded as TensorFlow Lite's int8 AveragePool
    (reference/integer_ops/pooling.h): sum > 0 ? (sum + n / 2) / n : (sum - n / 2) / n with
    C's division, which truncates towards zero: halves away from zero. The output keeps the
    input's scale and zero point."""
    sums = _windows(x.astype(np.int64), pool_size, strides, padding, 0).sum(axis=-1)
    inside = np.ones((1, *x.shape[1:3], 1), dtype=np.int64)
    counts = _windows(inside, pool_size, strides, padding, 0).sum(axis=-1)
    half = counts // 2
    mean = np.where(sums > 0, (sums + half) // counts, -((-sums + half) // counts))
    return mean.astype(np.int8)


def relu_int8(x: np.ndarray, zero_point: int) -> np.ndarray:
    """max(x, zero_point): ReLU on int8 with its input's scale and zero point."""
    return np.maximum(x, np.int8(zero_point))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float64, from e^-|x| (no overflow)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# The functions computed by table, with the output scale and zero point TensorFlow Lite's
# quantisation spec fixes for their int8 kernels (TANH and LOGISTIC: tanh's outputs in
# [-1, 1), sigmoid's in [0, 1), each spread over the 256 int8 values).
LOOKUP_FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], QParams]] = {
    "tanh": (np.tanh, QParams(1 / 128, 0)),
    "sigmoid": (_sigmoid, QParams(1 / 256, -128)),
}


def lookup_table(function: str, input_q: QParams, output_q: QParams) -> np.ndarray:
    """The 256 int8 outputs of `function` ("tanh" or "sigmoid") for the int8 inputs -128 to
    127, in that order: each input dequantised, the function applied, the result quantised
    (halves away from zero, clamped), as TensorFlow Lite fills its int8 tables
    (PopulateLookupTable in lite/kernels/activations.cc, LUTPopulate in later versions); in
    float64 here, not float32: the two can differ where a value falls within float32's
    rounding of a half step."""
    values = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64)
    real = np.float64(input_q.scale) * (values - input_q.zero_point)
    scaled = LOOKUP_FUNCTIONS[function][0](real) / np.float64(output_q.scale)
    return np.clip(round_half_away(scaled) + output_q.zero_point, INT8_MIN,
                   INT8_MAX).astype(np.int8)


def lookup_int8(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[x + 128]: each int8 value replaced by its entry in a 256-value table."""
    return table[x.astype(np.intp) - INT8_MIN]


# ---- the quantised layers ------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QuantizedLayer:
    """One operation of the integer network, with everything the twin and the C need.

    kind: "dense", "conv2d", "max_pool2d", "average_pool2d", "relu" or "lookup". For dense and
    conv2d: kernel (int8, Keras' layout: (in, out) or (kh, kw, in, out)), bias, multiplier and
    shift (int32, per output channel), weight_scales (the kernel's, float32 per output
    channel) and output_min (the clamp's low end: the output zero point under a fused ReLU,
    else -128). For the windows: window (the kernel or pool size), strides and padding as
    Keras has them. For a lookup: function ("tanh" or "sigmoid") and table (256 int8 values,
    see lookup_table). Shapes exclude the batch axis."""

    kind: str
    index: int  # of its (first) layer in the model
    description: str
    input_shape: Shape
    output_shape: Shape
    input_q: QParams
    output_q: QParams
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    weight_scales: np.ndarray | None = None  # float32 per output channel (for ONNX's QDQ)
    output_min: int = INT8_MIN
    window: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: str = "valid"
    function: str = ""
    table: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """int8 outputs (B, *output_shape) for int8 inputs (B, ...) of input_shape."""
        x = x.reshape(x.shape[0], *self.input_shape)
        return INT8_KERNELS[self.kind](self, x).reshape(x.shape[0], *self.output_shape)

    @property
    def weight_bytes(self) -> int:
        """Bytes of its constants: int8 kernel, int32 bias, multiplier and shift; a lookup's
        int8 table."""
        arrays = (self.kernel, self.bias, self.multiplier, self.shift, self.table)
        return sum(a.nbytes for a in arrays if a is not None)


def _affine_forward(layer: QuantizedLayer, x: np.ndarray) -> np.ndarray:
    args = (layer.kernel, layer.bias, layer.multiplier, layer.shift, layer.input_q.zero_point,
            layer.output_q.zero_point)
    if layer.kind == "dense":
        return dense_int8(x, *args, output_min=layer.output_min)
    return conv2d_int8(x, *args, layer.strides, layer.padding, output_min=layer.output_min)


INT8_KERNELS: dict[str, Callable[[QuantizedLayer, np.ndarray], np.ndarray]] = {
    "dense": _affine_forward,
    "conv2d": _affine_forward,
    "max_pool2d": lambda layer, x: max_pool2d_int8(x, layer.window, layer.strides,
                                                   layer.padding),
    "average_pool2d": lambda layer, x: average_pool2d_int8(x, layer.window, layer.strides,
                                                           layer.padding),
    "relu": lambda layer, x: relu_int8(x, layer.input_q.zero_point),
    "lookup": lambda layer, x: lookup_int8(x, layer.table),
}


# ---- from layers to float operations (folding) ---------------------------------------------

def _steps_text(steps: Sequence[LayerStep]) -> str:
    """E.g. "layers 1-3: Conv2D(...) + BatchNormalization(...) + Activation('relu')"."""
    first, last = steps[0].index, steps[-1].index
    where = f"layer {first}" if first == last else f"layers {first}-{last}"
    return f"{where}: " + " + ".join(repr(step.layer) for step in steps)


@dataclass
class _FloatOp:
    """An operation of the network to quantise, in float: the layers it stands for, its
    shapes, and what it needs of its kind (weights, window); calibration runs `forward`."""

    kind: str
    steps: list[LayerStep]
    input_shape: Shape
    output_shape: Shape
    kernel: np.ndarray | None = None  # float64, Keras' layout, BatchNormalization folded in
    bias: np.ndarray | None = None
    relu: bool = False
    window: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: str = "valid"
    function: str = ""  # a lookup's: "tanh" or "sigmoid"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """float32 outputs (B, *output_shape) for float32 inputs of input_shape."""
        x = x.reshape(x.shape[0], *self.input_shape)
        out = FLOAT_KERNELS[self.kind](self, x)
        return (np.maximum(out, 0) if self.relu else out).reshape(x.shape[0],
                                                                  *self.output_shape)


def _float_average_pool(op: _FloatOp, x: np.ndarray) -> np.ndarray:
    sums = _windows(x, op.window, op.strides, op.padding, 0).sum(axis=-1)
    counts = _windows(np.ones((1, *x.shape[1:3], 1), np.float32), op.window, op.strides,
                      op.padding, 0).sum(axis=-1)
    return sums / counts


# On the last layer these run in float at the exit (the twins of the C's float code); sigmoid
# and tanh inside the network are look-up tables, softmax is refused there.
EXITS = {"softmax": reference.softmax_forward, "sigmoid": reference.sigmoid_forward,
         "tanh": reference.tanh_forward}
INNER_ACTIVATIONS = ("linear", "relu", *LOOKUP_FUNCTIONS)

FLOAT_KERNELS: dict[str, Callable[[_FloatOp, np.ndarray], np.ndarray]] = {
    "dense": lambda op, x: x @ op.kernel.astype(np.float32) + op.bias.astype(np.float32),
    "conv2d": lambda op, x: reference.conv2d_forward(
        None, None, x, op.kernel.astype(np.float32), op.bias.astype(np.float32), op.strides,
        op.padding),
    "max_pool2d": lambda op, x: _windows(x, op.window, op.strides, op.padding,
                                         -np.inf).max(axis=-1),
    "average_pool2d": _float_average_pool,
    "relu": lambda op, x: np.maximum(x, 0),
    "lookup": lambda op, x: EXITS[op.function](None, x),  # the function the table stands for
}


class QuantizationError(ValueError):
    """A model (or its calibration data) that cannot be quantised as asked."""


@dataclass
class _Lowering:
    """The float operations built so far, layer by layer. `open_affine`: the Dense or Conv2D
    that the next layer may still fold into (a BatchNormalization) or fuse with (a ReLU):
    only identity layers came after it. exit_activation: the softmax, sigmoid or tanh that
    ends the network, run in float (nothing but identity layers may follow exit_step, which
    applies it), over groups of exit_group values; "linear" if none. A sigmoid or tanh is
    taken for the exit until a layer that computes comes after it: then it was a hidden one,
    and becomes a table lookup. input_rescaling: the (scale, offset) of a Rescaling before
    any operation, folded into the input's quantisation."""

    ops: list[_FloatOp] = field(default_factory=list)
    open_affine: _FloatOp | None = None
    input_rescaling: tuple[float, float] | None = None  # a leading Rescaling's scale, offset
    exit_activation: str = "linear"
    exit_step: LayerStep | None = None
    exit_group: int = 0

    def refuse(self, step: LayerStep, why: str) -> QuantizationError:
        return QuantizationError(f"cannot quantise layer {step.index} ({step.kind}) to int8: "
                                 f"{why}")

    def check_before_exit(self, step: LayerStep) -> None:
        """Nothing computes after the exit activation: a sigmoid or tanh that `step` follows
        becomes a table lookup; a softmax is refused."""
        if self.exit_step is None:
            return
        if self.exit_activation not in LOOKUP_FUNCTIONS:
            raise self.refuse(step, f"it follows layer {self.exit_step.index}'s "
                                    f"{self.exit_activation}, which int8 models apply in float "
                                    "at the very end only")
        hidden, function = self.exit_step, self.exit_activation
        self.exit_activation, self.exit_step, self.exit_group = "linear", None, 0
        self.ops.append(_FloatOp("lookup", [hidden], hidden.output_shape, hidden.output_shape,
                                 function=function))
        self.open_affine = None

    def append(self, op: _FloatOp, step: LayerStep) -> _FloatOp:
        self.check_before_exit(step)
        self.ops.append(op)
        self.open_affine = None
        return op

    def activation(self, step: LayerStep, op: _FloatOp | None) -> None:
        """Apply the step's activation after op (None: an Activation layer)."""
        activation = step.layer.activation
        if activation != "linear":
            self.check_before_exit(step)
        if activation in EXITS:
            self.exit_activation, self.exit_step = activation, step
            self.exit_group = int(step.output_shape[-1])
        elif activation == "relu":
            target = op or self.open_affine
            if target is not None:
                target.relu = True
                if op is None:
                    target.steps.append(step)
                self.open_affine = None  # a BatchNormalization cannot fold past the ReLU
            else:
                self.append(_FloatOp("relu", [step], step.input_shape, step.output_shape),
                            step)
        elif activation != "linear":
            raise self.refuse(step, f"no int8 code for activation {activation!r} (supported: "
                                    f"{', '.join(INNER_ACTIVATIONS)}; softmax on the last "
                                    "layer only)")


def _lower_affine(lowering: _Lowering, step: LayerStep) -> None:
    kernel, bias = (w.astype(np.float64) for w in step.weights)
    window = strides = (1, 1)
    padding = "valid"
    if step.kind == "Conv2D":
        window, strides, padding = (step.layer.kernel_size, step.layer.strides,
                                    step.layer.padding)
    kind = "conv2d" if kernel.ndim == 4 else "dense"
    op = lowering.append(_FloatOp(kind, [step], step.input_shape, step.output_shape, kernel,
                                  bias, window=window, strides=strides, padding=padding), step)
    lowering.activation(step, op)
    lowering.open_affine = None if op.relu or lowering.exit_step else op


def _pool_op(kind: str) -> Callable[[_Lowering, LayerStep], None]:
    def lower(lowering: _Lowering, step: LayerStep) -> None:
        layer = step.layer
        lowering.append(_FloatOp(kind, [step], step.input_shape, step.output_shape,
                                 window=tuple(layer.pool_size), strides=tuple(layer.strides),
                                 padding=layer.padding), step)
    return lower


def _lower_global_average_pool(lowering: _Lowering, step: LayerStep) -> None:
    """GlobalAveragePooling2D: one window over the whole image (its output, (C,) or
    (1, 1, C) with keepdims, is the same memory)."""
    h, w = step.input_shape[:2]
    lowering.append(_FloatOp("average_pool2d", [step], step.input_shape, step.output_shape,
                             window=(h, w), strides=(h, w), padding="valid"), step)


def _lower_reshape(lowering: _Lowering, step: LayerStep) -> None:
    """Flatten: channels last, an image already is its flattened row; only the shape the
    next layer reads changes. It ends what a BatchNormalization could fold into."""
    lowering.open_affine = None


def _lower_identity(lowering: _Lowering, step: LayerStep) -> None:
    """Dropout and RandomTranslation: the identity at inference."""


def _lower_activation(lowering: _Lowering, step: LayerStep) -> None:
    lowering.activation(step, None)


def _fold_batchnorm(lowering: _Lowering, step: LayerStep) -> None:
    """Fold y = gamma * (z - mean) / sqrt(var + eps) + beta into the Dense or Conv2D that
    computes z: kernel * s and (bias - mean) * s + beta per output channel, s = gamma /
    sqrt(var + eps)."""
    op = lowering.open_affine
    if op is None:
        raise lowering.refuse(step, "int8 models fold BatchNormalization into the Dense or "
                                    "Conv2D it directly follows (with a linear activation, "
                                    "before any ReLU); put it right after one")
    gamma, beta, mean, variance = (w.astype(np.float64) for w in step.weights)
    factor = gamma / np.sqrt(variance + step.layer.epsilon)
    op.kernel = op.kernel * factor
    op.bias = (op.bias - mean) * factor + beta
    op.steps.append(step)


def _fold_rescaling(lowering: _Lowering, step: LayerStep) -> None:
    """Rescaling: before any operation, into the input's quantisation (quantize_ops); right
    after a Dense or Conv2D with a linear activation, into its kernel and bias (kernel *
    scale, bias * scale + offset)."""
    lowering.check_before_exit(step)  # a sigmoid or tanh before it: a hidden one, a lookup
    scale, offset = step.layer.scale, step.layer.offset
    op = lowering.open_affine
    if op is not None:
        op.kernel = op.kernel * scale
        op.bias = op.bias * scale + offset
        op.steps.append(step)
        return
    if lowering.ops or lowering.input_rescaling is not None:
        raise lowering.refuse(step, "int8 models fold a Rescaling into the input's "
                                    "quantisation (as the first layer) or into the Dense or "
                                    "Conv2D it directly follows (with a linear activation, "
                                    "before any ReLU)")
    if scale <= 0:
        raise lowering.refuse(step, f"its scale is {scale}: only a scale > 0 folds into the "
                                    "input's quantisation")
    lowering.input_rescaling = (scale, offset)


# The table of layer kinds, keyed by the layer's class name (Keras'): how each becomes the
# integer network's operations. AveragePooling2D and GlobalAveragePooling2D take Keras'
# meanings (pool_size, strides, padding; padding left out of the average).
LOWERINGS: dict[str, Callable[[_Lowering, LayerStep], None]] = {
    "Dense": _lower_affine,
    "Conv2D": _lower_affine,
    "MaxPool2D": _pool_op("max_pool2d"),
    "AveragePooling2D": _pool_op("average_pool2d"),
    "GlobalAveragePooling2D": _lower_global_average_pool,
    "Flatten": _lower_reshape,
    "Dropout": _lower_identity,
    "RandomTranslation": _lower_identity,
    "BatchNormalization": _fold_batchnorm,
    "Activation": _lower_activation,
    "Rescaling": _fold_rescaling,
}


def lower(steps: Sequence[LayerStep]) -> _Lowering:
    """The float operations the layers become (BatchNormalization folded, ReLUs fused), and
    the activation left for the end; an error names the first layer that cannot be
    quantised."""
    lowering = _Lowering()
    for step in steps:
        if step.kind not in LOWERINGS:
            raise lowering.refuse(step, f"no int8 code for {step.kind} layers (supported: "
                                        f"{', '.join(sorted(LOWERINGS))})")
        LOWERINGS[step.kind](lowering, step)
    return lowering


# ---- calibration and quantisation ----------------------------------------------------------

def calibration_sample(x: np.ndarray, rows: int = DEFAULT_CALIBRATION_ROWS,
                       seed: int = 0) -> np.ndarray:
    """`rows` rows of x drawn at random without replacement (seeded), in their order in x:
    calibration images that stand for the whole training set."""
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"calibration rows must be a whole number >= 1, got {rows!r}")
    if rows > len(x):
        raise ValueError(f"asked for {rows} calibration rows of {len(x)}")
    picked = np.sort(np.random.default_rng(seed).choice(len(x), size=int(rows), replace=False))
    return x[picked]


def _calibration_array(x: Any, input_shape: Shape,
                       rescaling: tuple[float, float] | None = None) -> np.ndarray:
    """x_calibration checked as the model's predict checks x (uint8 pixels as they are when
    the model starts with a Rescaling), then through that Rescaling: the input of the first
    operation, as float32."""
    from mnistnet.inputs import as_features  # the model's own input checks and messages

    x = as_features(x, input_shape, "x_calibration", pixels=rescaling is not None)
    if x.shape[0] < MIN_CALIBRATION_ROWS:
        raise QuantizationError(
            f"x_calibration has {x.shape[0]} rows; calibrating int8 ranges needs at least "
            f"{MIN_CALIBRATION_ROWS} (default {DEFAULT_CALIBRATION_ROWS}): give more training "
            "images")
    if rescaling is not None:
        return reference.rescaling_forward(None, x, *rescaling)
    return x


def calibrate(ops: Sequence[_FloatOp], x: np.ndarray) -> list[tuple[float, float]]:
    """(least, greatest) value of the input, then of each operation's output, over the rows
    of x (run in float32, CHUNK rows at a time)."""
    ranges = [(math.inf, -math.inf)] * (len(ops) + 1)
    for start in range(0, x.shape[0], CHUNK):
        values = x[start: start + CHUNK]
        for i in range(len(ops) + 1):
            if i:
                values = ops[i - 1].forward(values)
            low, high = ranges[i]
            ranges[i] = (min(low, float(values.min())), max(high, float(values.max())))
    return ranges


def _quantize_weights(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 kernel, float32 scale per output channel: the last axis): symmetric, max|w| ->
    127. A channel of zeros gets scale 1."""
    largest = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
    scales = np.where(largest > 0, largest / WEIGHT_MAX, 1.0).astype(np.float32)
    q = np.clip(round_half_away(kernel / scales.astype(np.float64)), -WEIGHT_MAX, WEIGHT_MAX)
    return q.astype(np.int8), scales


def _quantize_affine(op: _FloatOp, input_q: QParams, output_q: QParams) -> QuantizedLayer:
    kernel, weight_scales = _quantize_weights(op.kernel)
    product_scales = np.float64(input_q.scale) * weight_scales.astype(np.float64)
    # int32 with room for every product sum on top: sum |(x - zp) * w| <= terms * 255 * 127.
    terms = int(np.prod(kernel.shape[:-1]))
    headroom = INT32_MAX - terms * (INT8_MAX - INT8_MIN) * WEIGHT_MAX
    if headroom <= 0:
        raise QuantizationError(f"cannot quantise {_steps_text(op.steps)}: {terms} inputs per "
                                "output overflow an int32 sum")
    bias = np.clip(round_half_away(op.bias / product_scales), -headroom, headroom)
    try:
        pairs = [quantize_multiplier(s / output_q.scale) for s in product_scales]
    except ValueError as exc:
        raise QuantizationError(f"cannot quantise {_steps_text(op.steps)}: {exc}") from None
    output_min = max(INT8_MIN, output_q.zero_point) if op.relu else INT8_MIN
    return QuantizedLayer(op.kind, op.steps[0].index, _steps_text(op.steps), op.input_shape,
                          op.output_shape, input_q, output_q, kernel, bias.astype(np.int32),
                          np.array([m for m, _ in pairs], dtype=np.int32),
                          np.array([s for _, s in pairs], dtype=np.int32), weight_scales,
                          output_min, op.window, op.strides, op.padding)


def _quantize_lookup(op: _FloatOp, input_q: QParams) -> QuantizedLayer:
    output_q = LOOKUP_FUNCTIONS[op.function][1]
    return QuantizedLayer("lookup", op.steps[0].index,
                          f"the {op.function} of {_steps_text(op.steps)}", op.input_shape,
                          op.output_shape, input_q, output_q, function=op.function,
                          table=lookup_table(op.function, input_q, output_q))


def rescaled_input_q(q: QParams, scale: float, offset: float) -> QParams:
    """How the input of a leading Rescaling(scale, offset) is quantised when q quantises its
    output: real = scale * x + offset = q.scale * (q_x - q.zero_point) holds for q_x quantised
    with scale q.scale / scale and zero point q.zero_point + offset / q.scale, rounded to a
    whole step (exact for offset 0) and kept in int8."""
    shift = int(round_half_away(offset / q.scale))
    return QParams(float(np.float32(q.scale / scale)),
                   int(np.clip(q.zero_point + shift, INT8_MIN, INT8_MAX)))


def quantize_ops(ops: Sequence[_FloatOp], ranges: Sequence[tuple[float, float]],
                 rescaling: tuple[float, float] | None = None,
                 ) -> tuple[QParams, list[QuantizedLayer]]:
    """The input's QParams and the quantised operations, from the calibrated ranges. Pools
    and a lone ReLU keep their input's scale and zero point; a Dense or Conv2D takes its
    output's from its range; a lookup has its function's fixed output scale and zero
    point. rescaling: a leading Rescaling's (scale, offset), folded into the input's QParams
    (rescaled_input_q); ranges[0] is then its output's range."""
    first_q = QParams.from_range(*ranges[0])
    input_q = first_q if rescaling is None else rescaled_input_q(first_q, *rescaling)
    layers, q = [], first_q
    for op, value_range in zip(ops, ranges[1:], strict=True):
        if op.kind in ("dense", "conv2d"):
            out_q = QParams.from_range(*value_range)
            layers.append(_quantize_affine(op, q, out_q))
            q = out_q
        elif op.kind == "lookup":
            layers.append(_quantize_lookup(op, q))
            q = layers[-1].output_q
        else:
            layers.append(QuantizedLayer(op.kind, op.steps[0].index, _steps_text(op.steps),
                                         op.input_shape, op.output_shape, q, q,
                                         window=op.window, strides=op.strides,
                                         padding=op.padding))
    return input_q, layers


# ---- the quantised model -------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QuantizedModel:
    """A model quantised to int8 (see mnistnet.int8): its NumPy twin, and the source of its C.

    input_q and output_q: how the input and the int8 outputs map to floats. The int8 outputs
    are the last layer's pre-activation values; exit_activation ("linear", "softmax",
    "sigmoid" or "tanh") then runs in float, over groups of exit_group values (a softmax over
    an image's channels: the channels)."""

    input_shape: Shape
    n_outputs: int
    input_q: QParams
    output_q: QParams
    layers: tuple[QuantizedLayer, ...]
    exit_activation: str
    exit_group: int
    about: tuple[str, ...]  # the float model's description (mnistnet.export.describe_model)
    calibration_rows: int
    float_weight_bytes: int  # the float model's parameters, float32
    # A leading Rescaling folded into input_q (the input is quantised as it comes: e.g. uint8
    # pixels, which quantize_input and predict then take as they are).
    input_rescaling: tuple[float, float] | None = None

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the int8 network's constants (its flash, without code)."""
        return sum(layer.weight_bytes for layer in self.layers)

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """x (n, *input_shape) or flattened, floats (or uint8 pixels for a model that
        starts with a Rescaling), as int8 (n, input_dim): what the C's float entry point
        computes first."""
        from mnistnet.inputs import as_features

        pixels = self.input_rescaling is not None
        return quantize_values(as_features(x, self.input_shape, pixels=pixels), self.input_q)

    def predict_int8(self, x_int8: np.ndarray) -> np.ndarray:
        """The int8 outputs (n, n_outputs) for int8 inputs (n, input_dim) (or (n,
        *input_shape)): bit for bit what the generated C's <name>_predict_int8 writes."""
        x = np.asarray(x_int8)
        if x.dtype != np.int8:
            raise TypeError(f"predict_int8 takes int8 inputs, got {x.dtype}; quantise floats "
                            "with quantize_input")
        if x.ndim < 1 or math.prod(x.shape[1:]) != self.input_dim:
            raise ValueError(f"predict_int8 takes (n, {self.input_dim}) or (n, "
                             f"{', '.join(map(str, self.input_shape))}) inputs, got {x.shape}")
        x = x.reshape(x.shape[0], self.input_dim)
        out = np.empty((x.shape[0], self.n_outputs), dtype=np.int8)
        for start in range(0, x.shape[0], CHUNK):
            values = x[start: start + CHUNK]
            for layer in self.layers:
                values = layer.forward(values)
            out[start: start + CHUNK] = values.reshape(values.shape[0], -1)
        return out

    def dequantize_output(self, q_out: np.ndarray) -> np.ndarray:
        """int8 outputs as floats, the exit activation applied: what predict returns."""
        values = dequantize_values(q_out, self.output_q)
        if self.exit_activation == "linear":
            return values
        groups = values.reshape(-1, self.exit_group)
        return EXITS[self.exit_activation](None, groups).reshape(values.shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float outputs (n, n_outputs) for float inputs, as model.predict takes them: the
        input quantised, the integer network, the outputs dequantised and the last layer's
        softmax, sigmoid or tanh applied in float."""
        return self.dequantize_output(self.predict_int8(self.quantize_input(x)))

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print the integer network: input, one line per operation, the exit, the sizes;
        returns None, as Model.summary (and Keras). print_fn is called with each line
        instead of print, e.g. ``lines.append`` to keep the text."""
        lines = [f"int8 model, calibrated on {self.calibration_rows} rows: input "
                 f"{self.input_shape} scale {self.input_q.scale:.6g} zero point "
                 f"{self.input_q.zero_point}"]
        lines += [f"  {layer.kind} {layer.output_shape} <- {layer.description}"
                  for layer in self.layers]
        lines.append(f"  then {self.exit_activation} in float; int8 constants "
                     f"{self.weight_bytes:,} bytes (float32 weights: "
                     f"{self.float_weight_bytes:,})")
        for line in lines:
            (print_fn or print)(line)

    def export_c(self, directory: str | os.PathLike, name: str = "model") -> tuple[Path, Path]:
        """Write DIR/<name>.h and DIR/<name>.c: this int8 network as C99 (see
        mnistnet.export_int8.export_quantized_c)."""
        from mnistnet.export_int8 import export_quantized_c

        return export_quantized_c(self, directory, name)

    def export_onnx(self, path: str | os.PathLike, opset: int = 13) -> Path:
        """Write this int8 network as an ONNX graph in the QDQ format (see
        mnistnet.export_int8_onnx); needs the optional extra mnistnet[onnx]."""
        from mnistnet.export_int8_onnx import export_quantized_onnx

        return export_quantized_onnx(self, path, opset)


def quantize_steps(steps: Sequence[LayerStep], input_shape: Shape, x_calibration: Any,
                   about: Sequence[str] = (), float_weight_bytes: int = 0) -> QuantizedModel:
    """quantize() for layers given as export.LayerStep (a model's are layer_steps(model))."""
    lowering = lower(steps)
    rescaling = lowering.input_rescaling
    x = _calibration_array(x_calibration, input_shape, rescaling)
    input_q, layers = quantize_ops(lowering.ops, calibrate(lowering.ops, x), rescaling)
    output_shape = layers[-1].output_shape if layers else tuple(input_shape)
    output_q = layers[-1].output_q if layers else input_q
    return QuantizedModel(tuple(input_shape), math.prod(output_shape), input_q, output_q,
                          tuple(layers), lowering.exit_activation,
                          lowering.exit_group or math.prod(output_shape), tuple(about),
                          x.shape[0], float_weight_bytes, rescaling)


def check_quantizable(model: Model) -> None:
    """Raise QuantizationError naming the first layer of `model` that int8 cannot hold, as
    quantize would, without calibrating (a check before loading calibration images)."""
    lower(layer_steps(model))


def quantize(model: Model, x_calibration: np.ndarray) -> QuantizedModel:
    """The model quantised to int8, TensorFlow Lite's post-training static scheme (see
    mnistnet.int8): weights per output channel, activations per tensor, calibrated on the
    rows of x_calibration (float samples of model.input_shape or flattened, like
    model.predict's x; at least MIN_CALIBRATION_ROWS = 100, DEFAULT_CALIBRATION_ROWS = 1000
    training images are a good choice: see calibration_sample).

    Raises QuantizationError (a ValueError) naming the first layer that cannot be quantised:
    kinds without an entry in LOWERINGS (every kind of mnistnet.kinds has one); a
    BatchNormalization anywhere but right after a Dense or Conv2D with a linear activation
    (it is folded into it); a Rescaling anywhere but first (folded into the input's
    quantisation) or where a BatchNormalization may be (folded likewise); a softmax anywhere
    but on the last layer; an activation other than linear, relu, sigmoid, tanh and softmax.
    Hidden sigmoid and tanh are look-up tables; the last layer's softmax, sigmoid or tanh runs
    in float. ValueError or TypeError for calibration data of the wrong shape or type."""
    return quantize_steps(layer_steps(model), model.input_shape, x_calibration,
                          describe_model(model), 4 * int(model.plan.n_params))


def export_int8_c(model: Model, directory: str | os.PathLike, x_calibration: np.ndarray,
                  name: str = "model") -> tuple[Path, Path]:
    """Quantise `model` on x_calibration (see quantize) and write it as int8 C99,
    DIR/<name>.h and DIR/<name>.c (see mnistnet.export_int8); returns their paths. The name
    and folder are checked before the (slower) quantisation."""
    from mnistnet.export import check_c_name, check_output_folder

    check_c_name(name)
    check_output_folder(directory, f"output folder {directory}")
    return quantize(model, x_calibration).export_c(directory, name)
