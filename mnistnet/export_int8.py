"""An int8 model (mnistnet.int8.QuantizedModel) as one C99 source file for microcontrollers.

    q = mn.quantize(model, x_train[:1000])
    q.export_c("firmware/", "digits")    # digits.h and digits.c

The header declares

    int digits_predict(const float *input, float *output);      /* as the float export's */
    int digits_predict_int8(const int8_t *input, int8_t *output);

`digits_predict` reads one sample of DIGITS_INPUT_SIZE floats (channels last), quantises it,
runs the integer network and writes DIGITS_OUTPUT_SIZE floats: the dequantised outputs after
the last layer's softmax or sigmoid, as q.predict gives them. A program written for the float
export's digits.c switches by recompiling with this one. `digits_predict_int8` is the integer
network alone: int8 in (DIGITS_INPUT_SCALE, DIGITS_INPUT_ZERO_POINT), int8 out, exactly
q.predict_int8's values. Both return 0.

Float remains in `<name>_predict` only (the input's quantisation, the outputs' dequantisation,
expf in a softmax or sigmoid at the exit, tanhf in a tanh): the layers are integer code (hidden
tanh and sigmoid layers too: tables), and building with -DMNISTNET_NO_FLOAT leaves that
function out, so no float operation is compiled at all (for a core without an FPU, nothing of
the soft-float library is linked). The input's quantisation
divides in float as the twin does: it matches to the bit where float arithmetic is IEEE single
precision (FLT_EVAL_METHOD 0: x86-64, Arm with or without FPU), not on an x87 FPU.

The weights are `static const int8_t` arrays (kernels: dense as (out, in), conv2d as (out,
kh, kw, in), each output's weights contiguous), the biases, requantisation multipliers and
shifts `static const int32_t`, all in flash; the layer outputs live in two local int8 arrays
on the stack: no allocation, no writable global, thread-safe. The header gives their sizes:
<NAME>_WEIGHTS_BYTES (flash of the constants), <NAME>_SCRATCH_BYTES (the arrays on
predict_int8's stack) and <NAME>_PREDICT_SCRATCH_BYTES (predict's: those and an int8 copy of
the input and output); add the functions' own frames (-fstack-usage) for the stack to reserve.
The products are summed a row at a time by one function, dot_int8: a Dense's row, and each
row of a convolution's window that lies inside the image ("same" padding clips the window:
the padding, read as the input's zero point, adds nothing).

A hidden tanh or sigmoid is a `static const int8_t` table of 256 values per layer (see
mnistnet.int8.lookup_table): the Dense or Conv2D before it writes table[v + 128] for each
requantised v, and a lone one (after a pool, say) is a loop of lookups.

A Conv2D followed by a MaxPool2D (with a tanh or sigmoid between them or not) runs as one
function that keeps no convolution output: each pooled value requantises the greatest of the
convolution's sums in its window, computed as needed (once each where the pool's windows do
not overlap): requantisation and the tables are non-decreasing, so this is the twin's max of
the requantised outputs, with a quarter of the requantisations for a 2x2 pool. A Conv2D
followed by an AveragePooling2D (or a global one) whose windows do not overlap runs as one
function too: each convolution output is computed once, where its window adds it up. Each
layer kind is one emitter in a table keyed by QuantizedLayer.kind, each run of kinds that
fuses one in another; a kind without an emitter is an error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

import numpy as np

from mnistnet._files import write_atomically
from mnistnet.codes import window_geometry
from mnistnet.export import (
    C_ACTIVATIONS,
    _c_comment,
    c_float,
    check_c_name,
    check_output_folder,
    make_output_folder,
)

if TYPE_CHECKING:
    from mnistnet.int8 import QuantizedLayer, QuantizedModel

__all__ = ["c_sizes", "export_quantized_c"]

INTS_PER_LINE = 16  # in the generated C arrays
LIBM = {"softmax": "expf", "sigmoid": "expf", "tanh": "tanhf"}  # what each exit calls
NO_FLOAT_FLAG = "MNISTNET_NO_FLOAT"

# ---- the helpers every file has ------------------------------------------------------------

C_REQUANTIZE = """\
/* x >> n rounded towards minus infinity: C99 leaves >> of a negative value to the
 * implementation; compilers make this one arithmetic shift. */
static int32_t shift_right_floor32(int32_t x, int n)
{
    return x >= 0 ? x >> n : ~(~x >> n);
}

static int64_t shift_right_floor64(int64_t x, int n)
{
    return x >= 0 ? x >> n : ~(~x >> n);
}

/* sum * multiplier * 2^(shift - 31), rounded as CMSIS-NN's arm_nn_requantize
 * (Include/arm_nnsupportfunctions.h, its default path: CMSIS_NN_USE_SINGLE_ROUNDING unset)
 * and as mnistnet.int8.requantize: a left shift by max(shift, 0), saturated (where CMSIS-NN
 * would overflow, the output saturates either way); arm_nn_doubling_high_mult_no_sat,
 * (x * multiplier + 2^30) >> 31; arm_nn_divide_by_power_of_two by 2^max(-shift, 0), halves
 * away from zero. */
static int32_t requantize(int32_t sum, int32_t multiplier, int32_t shift)
{
    const int left = shift > 0 ? (int)shift : 0;
    const int right = shift > 0 ? 0 : (int)-shift;
    const int32_t mask = (int32_t)(((int64_t)1 << right) - 1);
    int32_t x = sum;
    int32_t high, result;
    if (x > (INT32_MAX >> left))
        x = INT32_MAX;
    else if (x < -(INT32_MAX >> left) - 1)
        x = INT32_MIN;
    else
        x *= (int32_t)1 << left;
    high = (int32_t)shift_right_floor64((int64_t)x * multiplier + ((int64_t)1 << 30), 31);
    result = shift_right_floor32(high, right);
    if ((high & mask) > (mask >> 1) + (result < 0 ? 1 : 0))
        ++result;
    return result;
}

/* value + zero_point clamped to [low, 127] (low: the zero point under a fused ReLU, else
 * -128); clamped before the addition, which then cannot overflow. */
static int8_t to_int8(int32_t value, int32_t zero_point, int32_t low)
{
    if (value < low - zero_point)
        value = low - zero_point;
    if (value > 127 - zero_point)
        value = 127 - zero_point;
    return (int8_t)(value + zero_point);
}
"""

C_DOT = """\
/* The sum of (x[i] + offset) * w[i] over n values: products of real values divided by their
 * scales (offset is minus the input's zero point), each at most 255 * 127 in magnitude; every
 * row of every layer. Built for size (-Os, as microcontroller builds usually are), GCC inlines
 * it deep in a layer's loops and spills this loop's registers to the stack: kept apart, the
 * convnet takes 16.6M instructions on the Cortex-M4 instead of 32.5M. Built for speed (-O2),
 * it is best inlined: the trip count known, GCC vectorises it (3x faster on x86-64). */
#if defined(__GNUC__) && defined(__OPTIMIZE_SIZE__)
#define MNISTNET_NOINLINE __attribute__((noinline))
#else
#define MNISTNET_NOINLINE
#endif
MNISTNET_NOINLINE static int32_t dot_int8(const int8_t *x, const int8_t *w, int n,
                                          int32_t offset)
{
    int32_t sum = 0;
    for (int i = 0; i < n; ++i)
        sum += (x[i] + offset) * w[i];
    return sum;
}
"""

# ---- the layers ----------------------------------------------------------------------------

# Every function has its sizes written in. ${offset} is -(input zero point): dot_int8's.
C_DENSE = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int j = 0; j < ${n_out}; ++j) {
        const int32_t sum = ${name}_bias[j]
                            + dot_int8(in, ${name}_kernel + j * ${n_in}, ${n_in}, ${offset});
        out[j] = ${requantize};
    }
}
""")

# The sum of one output of the convolution, filter f at (oy, ox), before requantisation.
# Keras' Conv2D is a cross-correlation. Each row of the window sums as one loop: its pixels of
# in_c channels are contiguous, in the input (channels last) as in the kernel (out, kh, kw,
# in). The window starts at (top, left) of the input; with "same" padding, ${clip} keeps its
# rows ky0..ky1 and columns kx0..kx1 inside the image: the padding reads as the input's zero
# point, (x - zero point) = 0, and adds nothing.
C_CONV2D_SUM = Template("""\
static int32_t ${function}_sum(const int8_t *in, int oy, int ox, int f)
{
    const int top = oy * ${s_h} - ${pad_top}, left = ox * ${s_w} - ${pad_left};
${clip}    int32_t sum = ${name}_bias[f];
    for (int ky = ${ky0}; ky < ${ky1}; ++ky)
        sum += dot_int8(in + ((top + ky) * ${in_w} + left + ${kx0}) * ${in_c},
                        ${name}_kernel + ((f * ${k_h} + ky) * ${k_w} + ${kx0}) * ${in_c},
                        ${row}, ${offset});
    return sum;
}
""")

C_CONV2D_CLIP = Template("""\
    const int ky0 = top < 0 ? -top : 0, ky1 = top + ${k_h} > ${in_h} ? ${in_h} - top : ${k_h};
    const int kx0 = left < 0 ? -left : 0, kx1 = left + ${k_w} > ${in_w} ? ${in_w} - left : ${k_w};
""")

REQUANTIZE_CALL = ("to_int8(requantize({sum}, {name}_multiplier[{f}], {name}_shift[{f}]), "
                   "{zero_point}, {low})")
LOOKUP_CALL = "{table}[{value} + 128]"  # an int8 value's entry in its 256-value table

C_CONV2D = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy)
        for (int ox = 0; ox < ${out_w}; ++ox)
            for (int f = 0; f < ${out_c}; ++f)
                out[(oy * ${out_w} + ox) * ${out_c} + f] =
                    ${requantize};
}
""")

# A window over the input (rows ${in_h}, columns ${in_w}), Keras' pooling geometry: positions
# in the padding are skipped (for max pooling they never win; average pooling leaves them out
# of the count, as Keras). ${value} declares v, the window's value at (iy, ix) for channel c.
C_WINDOW_LOOPS = Template("""\
                for (int ky = 0; ky < ${k_h}; ++ky) {
                    const int iy = oy * ${s_h} + ky - ${pad_top};
${skip_row}                    for (int kx = 0; kx < ${k_w}; ++kx) {
                        const int ix = ox * ${s_w} + kx - ${pad_left};
${skip_column}                        {
                            ${value};
${accumulate}
                        }
                    }
                }
""")

C_MAX_POOL = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy)
        for (int ox = 0; ox < ${out_w}; ++ox)
            for (int c = 0; c < ${out_c}; ++c) {
                int8_t best = -128;
${loops}                out[(oy * ${out_w} + ox) * ${out_c} + c] = best;
            }
}
""")

# The pool's window over the convolution's sums: requantisation is non-decreasing in the sum
# (a positive multiplier, monotone roundings and clamp), so the greatest sum gives the
# greatest int8, and one requantisation per pooled value gives what the twin's max of the
# requantised outputs gives.
C_CONV2D_MAX_POOL = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy)
        for (int ox = 0; ox < ${out_w}; ++ox)
            for (int c = 0; c < ${out_c}; ++c) {
                int32_t best = INT32_MIN;
${loops}                out[(oy * ${out_w} + ox) * ${out_c} + c] =
                    ${requantize};
            }
}
""")

# TensorFlow Lite's int8 AveragePool rounding (reference/integer_ops/pooling.h), as
# mnistnet.int8.average_pool2d_int8: C's division truncates towards zero, so adding or
# subtracting half the count first rounds halves away from zero.
C_AVERAGE_POOL = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy)
        for (int ox = 0; ox < ${out_w}; ++ox)
            for (int c = 0; c < ${out_c}; ++c) {
                int32_t sum = 0;
                int32_t count = 0;
${loops}                out[(oy * ${out_w} + ox) * ${out_c} + c] =
                    (int8_t)(sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count);
            }
}
""")

C_RELU = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int i = 0; i < ${size}; ++i)
        out[i] = (int8_t)(in[i] > ${zero_point} ? in[i] : ${zero_point});
}
""")

C_LOOKUP = Template("""\
static void ${function}(const int8_t *in, int8_t *out)
{
    for (int i = 0; i < ${size}; ++i)
        out[i] = ${lookup};
}
""")

SKIP_ROW = "if (iy < 0 || iy >= {rows})\n{indent}    continue; /* padding */\n"
SKIP_COLUMN = "if (ix < 0 || ix >= {columns})\n{indent}    continue;\n"


@dataclass
class CLayerCode:
    """What an emitter makes of one operation (or two, fused): constants and functions at
    file scope, and the call from predict_int8 (a format string with {src} and {dst})."""

    declarations: list[str]
    call: str
    output_shape: tuple[int, ...]
    weight_bytes: int = 0


def c_ints(ctype: str, name: str, values: np.ndarray, comment: str) -> str:
    """`static const <ctype> name[n] = {...};` (int32's lowest value written as an
    expression: -2147483648 is not a C int constant)."""
    flat = [int(v) for v in np.asarray(values).ravel()]
    text = [str(v) if v != -(2**31) else "(-2147483647 - 1)" for v in flat]
    lines = [", ".join(text[i:i + INTS_PER_LINE]) for i in range(0, len(text), INTS_PER_LINE)]
    body = ",\n".join(f"    {line}" for line in lines)
    return f"/* {comment} */\nstatic const {ctype} {name}[{len(flat)}] = {{\n{body}\n}};\n"


def _skips(window: Sequence[int], strides: Sequence[int], padding: str, in_h: int, in_w: int,
           depth: int) -> dict[str, int | str]:
    """The sizes of a window sliding over an (in_h, in_w) input and the lines skipping its
    positions outside: none for "valid" padding, whose windows stay inside."""
    (k_h, k_w), (s_h, s_w) = window, strides
    (_, pad_top), (_, pad_left) = (window_geometry(size, k, s, padding) for size, k, s in
                                   ((in_h, k_h, s_h), (in_w, k_w, s_w)))
    indent = "    " * depth
    same = padding == "same"
    return {"k_h": k_h, "k_w": k_w, "s_h": s_h, "s_w": s_w, "pad_top": pad_top,
            "pad_left": pad_left, "in_h": in_h, "in_w": in_w,
            "skip_row": (indent + SKIP_ROW.format(rows=in_h, indent=indent)) if same else "",
            "skip_column": ((indent + "    " + SKIP_COLUMN.format(columns=in_w,
                                                                  indent=indent + "    "))
                            if same else "")}


def _affine_constants(layer: QuantizedLayer, name: str) -> list[str]:
    what = f"layer {layer.index}"
    # Each output channel's weights contiguous: Keras' (..., out) moved to the front.
    kernel = np.moveaxis(layer.kernel, -1, 0)
    return [c_ints("int8_t", f"{name}_kernel", kernel,
                   f"{what}: int8 kernel {kernel.shape} (out first), symmetric per output "
                   "channel"),
            c_ints("int32_t", f"{name}_bias", layer.bias,
                   f"{what}: int32 bias, scale input_scale * weight_scale[out]"),
            c_ints("int32_t", f"{name}_multiplier", layer.multiplier,
                   f"{what}: requantisation multipliers (Q31)"),
            c_ints("int32_t", f"{name}_shift", layer.shift,
                   f"{what}: requantisation shifts (left if > 0)")]


def _affine_sizes(layer: QuantizedLayer, name: str, function: str) -> dict[str, int | str]:
    return {"function": function, "name": name, "offset": -layer.input_q.zero_point,
            "zero_point": layer.output_q.zero_point, "low": layer.output_min}


def _image_sizes(shape: Sequence[int], prefix: str) -> dict[str, int]:
    h, w, c = shape
    return {f"{prefix}_h": h, f"{prefix}_w": w, f"{prefix}_c": c}


def _table_name(lookup: QuantizedLayer) -> str:
    return f"layer{lookup.index}_{lookup.function}_table"


def _table_constant(lookup: QuantizedLayer) -> list[str]:
    return [c_ints("int8_t", _table_name(lookup), lookup.table,
                   f"{lookup.description}: int8 outputs for the inputs -128 to 127 (input "
                   f"scale {lookup.input_q.scale:.9g}, zero point {lookup.input_q.zero_point}; "
                   f"output {lookup.output_q.scale:g}, {lookup.output_q.zero_point})")]


def _looked_up(value: str, lookup: QuantizedLayer | None) -> str:
    """value, or its entry in lookup's table."""
    return value if lookup is None else LOOKUP_CALL.format(table=_table_name(lookup),
                                                           value=value)


def _lookup_parts(lookup: QuantizedLayer | None) -> tuple[list[str], int, str]:
    """(constants, their bytes, a comment's words) of an optional table after a layer."""
    if lookup is None:
        return [], 0, ""
    return _table_constant(lookup), lookup.weight_bytes, f" (through its {lookup.function} table)"


def _c_dense(layer: QuantizedLayer, name: str,
             lookup: QuantizedLayer | None = None) -> CLayerCode:
    function = f"{name}_dense"
    n_in, n_out = layer.kernel.shape
    table, table_bytes, then = _lookup_parts(lookup)
    code = C_DENSE.substitute(n_in=n_in, n_out=n_out,
                              requantize=_requantize_call(layer, name, "sum", "j", lookup),
                              **_affine_sizes(layer, name, function))
    return CLayerCode([*_affine_constants(layer, name), *table,
                       f"/* {layer.description}{then} */\n{code}"],
                      f"{function}({{src}}, {{dst}});", _last(layer, lookup).output_shape,
                      layer.weight_bytes + table_bytes)


def _last(layer: QuantizedLayer, lookup: QuantizedLayer | None) -> QuantizedLayer:
    return layer if lookup is None else lookup


def _conv2d_sum(layer: QuantizedLayer, name: str, function: str) -> str:
    kh, kw, c, _ = layer.kernel.shape
    sizes = _skips((kh, kw), layer.strides, layer.padding, *layer.input_shape[:2], 2)
    affine = _affine_sizes(layer, name, function)
    if layer.padding == "valid":  # every window inside: whole rows, sizes known
        window = {"clip": "", "ky0": 0, "ky1": kh, "kx0": 0, "row": kw * c}
    else:
        window = {"clip": C_CONV2D_CLIP.substitute(sizes), "ky0": "ky0", "ky1": "ky1",
                  "kx0": "kx0", "row": f"(kx1 - kx0) * {c}"}
    return C_CONV2D_SUM.substitute(in_c=c, **window, **sizes, **affine)


def _requantize_call(layer: QuantizedLayer, name: str, total: str, channel: str,
                     lookup: QuantizedLayer | None = None) -> str:
    """The int8 output of an affine layer for the sum `total` of output channel `channel`
    (through lookup's table if given)."""
    return _looked_up(REQUANTIZE_CALL.format(sum=total, name=name, f=channel,
                                             zero_point=layer.output_q.zero_point,
                                             low=layer.output_min), lookup)


def _c_conv2d(layer: QuantizedLayer, name: str,
              lookup: QuantizedLayer | None = None) -> CLayerCode:
    function = f"{name}_conv2d"
    table, table_bytes, then = _lookup_parts(lookup)
    loops = C_CONV2D.substitute(
        function=function, **_image_sizes(layer.output_shape, "out"),
        requantize=_requantize_call(layer, name, f"{function}_sum(in, oy, ox, f)", "f",
                                    lookup))
    return CLayerCode([*_affine_constants(layer, name), *table,
                       f"/* {layer.description}{then} */\n"
                       f"{_conv2d_sum(layer, name, function)}", loops],
                      f"{function}({{src}}, {{dst}});", _last(layer, lookup).output_shape,
                      layer.weight_bytes + table_bytes)


def _window_loops(layer: QuantizedLayer, in_shape: Sequence[int], value: str,
                  accumulate: str) -> str:
    sizes = _skips(layer.window, layer.strides, layer.padding, *in_shape[:2], 5)
    return C_WINDOW_LOOPS.substitute(value=value, accumulate=accumulate, **sizes)


def _pixel(in_shape: Sequence[int]) -> str:
    """Declares v, the input's value at (iy, ix) for channel c."""
    return f"const int8_t v = in[(iy * {in_shape[1]} + ix) * {in_shape[2]} + c]"


BEST = "                            best = v > best ? v : best;"
ADD = "                            sum += v;\n                            ++count;"


def _c_max_pool(layer: QuantizedLayer, name: str) -> CLayerCode:
    function = f"{name}_max_pool2d"
    loops = _window_loops(layer, layer.input_shape, _pixel(layer.input_shape), BEST)
    code = C_MAX_POOL.substitute(function=function, loops=loops,
                                 **_image_sizes(layer.output_shape, "out"))
    return CLayerCode([f"/* {layer.description} */\n{code}"],
                      f"{function}({{src}}, {{dst}});", layer.output_shape)


def _pool_image(pool: QuantizedLayer) -> tuple[int, ...]:
    """The pool's output as an image: a global pool's (C,) is (1, 1, C)."""
    return pool.output_shape if len(pool.output_shape) == 3 else (1, 1, pool.output_shape[-1])


def _c_average_pool(layer: QuantizedLayer, name: str) -> CLayerCode:
    function = f"{name}_average_pool2d"
    loops = _window_loops(layer, layer.input_shape, _pixel(layer.input_shape), ADD)
    code = C_AVERAGE_POOL.substitute(function=function, loops=loops,
                                     **_image_sizes(_pool_image(layer), "out"))
    return CLayerCode([f"/* {layer.description} */\n{code}"],
                      f"{function}({{src}}, {{dst}});", layer.output_shape)


def _c_relu(layer: QuantizedLayer, name: str) -> CLayerCode:
    function = f"{name}_relu"
    code = C_RELU.substitute(function=function, size=math.prod(layer.output_shape),
                             zero_point=layer.input_q.zero_point)
    return CLayerCode([f"/* {layer.description} */\n{code}"],
                      f"{function}({{src}}, {{dst}});", layer.output_shape)


def _c_lookup(layer: QuantizedLayer, name: str) -> CLayerCode:
    function = f"{name}_{layer.function}"
    code = C_LOOKUP.substitute(function=function, size=math.prod(layer.output_shape),
                               lookup=_looked_up("in[i]", layer))
    return CLayerCode([*_table_constant(layer), f"/* {layer.description} */\n{code}"],
                      f"{function}({{src}}, {{dst}});", layer.output_shape, layer.weight_bytes)


def _c_conv2d_max_pool(conv: QuantizedLayer, pool: QuantizedLayer, name: str,
                       lookup: QuantizedLayer | None = None) -> CLayerCode | None:
    """The convolution, its table if any, and the max pool after it in one function (see the
    module's docstring); None if the table decreases somewhere (the max would not pass
    through it)."""
    if lookup is not None and (np.diff(lookup.table.astype(np.int16)) < 0).any():
        return None
    function = f"{name}_conv2d_max_pool2d"
    table, table_bytes, then = _lookup_parts(lookup)
    loops = _window_loops(pool, conv.output_shape,
                          f"const int32_t v = {function}_sum(in, iy, ix, c)", BEST)
    code = C_CONV2D_MAX_POOL.substitute(
        function=function, loops=loops, **_image_sizes(pool.output_shape, "out"),
        requantize=_requantize_call(conv, name, "best", "c", lookup))
    return CLayerCode([*_affine_constants(conv, name), *table,
                       f"/* {conv.description} */\n{_conv2d_sum(conv, name, function)}",
                       f"/* {pool.description}: over the convolution's sums, each computed "
                       f"where a window needs it{then} */\n{code}"],
                      f"{function}({{src}}, {{dst}});", pool.output_shape,
                      conv.weight_bytes + table_bytes)


def _c_conv2d_average_pool(conv: QuantizedLayer, pool: QuantizedLayer, name: str,
                           lookup: QuantizedLayer | None = None) -> CLayerCode | None:
    """The convolution, its table if any, and the average pool after it in one function,
    each convolution output computed where its window adds it up; None if the pool's
    windows overlap (their shared outputs would be computed again)."""
    if any(s < k for s, k in zip(pool.strides, pool.window, strict=True)):
        return None
    function = f"{name}_conv2d_average_pool2d"
    table, table_bytes, then = _lookup_parts(lookup)
    value = _requantize_call(conv, name, f"{function}_sum(in, iy, ix, c)", "c", lookup)
    loops = _window_loops(pool, conv.output_shape, f"const int8_t v = {value}", ADD)
    code = C_AVERAGE_POOL.substitute(function=function, loops=loops,
                                     **_image_sizes(_pool_image(pool), "out"))
    return CLayerCode([*_affine_constants(conv, name), *table,
                       f"/* {conv.description} */\n{_conv2d_sum(conv, name, function)}",
                       f"/* {pool.description}: over the convolution's outputs{then}, each "
                       f"computed where its window needs it */\n{code}"],
                      f"{function}({{src}}, {{dst}});", pool.output_shape,
                      conv.weight_bytes + table_bytes)


C_EMITTERS: dict[str, Callable[[QuantizedLayer, str], CLayerCode]] = {
    "dense": _c_dense,
    "conv2d": _c_conv2d,
    "max_pool2d": _c_max_pool,
    "average_pool2d": _c_average_pool,
    "relu": _c_relu,
    "lookup": _c_lookup,
}
# Runs of operations that run as one function: their kinds -> emitter (of the layers, and
# the first one's name), which may decline (None). The longest run that fuses wins.
FusedEmitter = Callable[[Sequence["QuantizedLayer"], str], CLayerCode | None]
C_FUSED: dict[tuple[str, ...], FusedEmitter] = {
    ("conv2d", "lookup", "max_pool2d"): lambda ls, name: _c_conv2d_max_pool(ls[0], ls[2], name,
                                                                            ls[1]),
    ("conv2d", "lookup", "average_pool2d"): lambda ls, name: _c_conv2d_average_pool(
        ls[0], ls[2], name, ls[1]),
    ("conv2d", "max_pool2d"): lambda ls, name: _c_conv2d_max_pool(ls[0], ls[1], name),
    ("conv2d", "average_pool2d"): lambda ls, name: _c_conv2d_average_pool(ls[0], ls[1], name),
    ("conv2d", "lookup"): lambda ls, name: _c_conv2d(ls[0], name, ls[1]),
    ("dense", "lookup"): lambda ls, name: _c_dense(ls[0], name, ls[1]),
}


# ---- the program ---------------------------------------------------------------------------

@dataclass
class CProgram:
    """The generated source as its parts: constants and layer functions, predict_int8's
    statements and its buffers (name -> bytes), the constants' bytes."""

    name: str
    declarations: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    buffers: dict[str, int] = field(default_factory=dict)
    weight_bytes: int = 0

    @property
    def scratch_bytes(self) -> int:
        return sum(self.buffers.values())


def _fused_code(layers: Sequence[QuantizedLayer], name: str) -> tuple[CLayerCode, int] | None:
    """The code of the longest run at the start of `layers` that fuses, and its length."""
    for kinds in sorted(C_FUSED, key=len, reverse=True):
        if tuple(layer.kind for layer in layers[:len(kinds)]) == kinds:
            code = C_FUSED[kinds](layers[:len(kinds)], name)
            if code is not None:
                return code, len(kinds)
    return None


def _layer_codes(q: QuantizedModel) -> list[CLayerCode]:
    """Each operation's (or fused run's) code, in order."""
    codes, i, layers = [], 0, q.layers
    while i < len(layers):
        layer, name = layers[i], f"layer{layers[i].index}"
        fused = _fused_code(layers[i:], name)
        if fused is not None:
            codes.append(fused[0])
            i += fused[1]
            continue
        if layer.kind not in C_EMITTERS:
            raise ValueError(f"no int8 C emitter for {layer.kind} ({layer.description}); "
                             f"supported: {', '.join(sorted(C_EMITTERS))}")
        codes.append(C_EMITTERS[layer.kind](layer, name))
        i += 1
    return codes


def c_program(q: QuantizedModel, name: str) -> CProgram:
    """The layers' code with its data flow: the first reads `input`, the last writes
    `output`, the others alternate between two local int8 buffers, each as large as the
    largest output it holds."""
    codes = _layer_codes(q)
    program = CProgram(name)
    src = "input"
    for i, code in enumerate(codes):
        program.declarations += code.declarations
        program.weight_bytes += code.weight_bytes
        dst = "output" if i == len(codes) - 1 else f"buffer{i % 2}"
        if dst != "output":
            program.buffers[dst] = max(program.buffers.get(dst, 0),
                                       math.prod(code.output_shape))
        program.statements.append(code.call.format(src=src, dst=dst))
        src = dst
    if not codes:  # nothing to compute: the output is the input
        program.statements.append(f"for (int i = 0; i < {q.n_outputs}; ++i)\n"
                                  "        output[i] = input[i];")
    return program


def _sizes(q: QuantizedModel, program: CProgram) -> dict[str, int]:
    return {"weights_bytes": program.weight_bytes, "scratch_bytes": program.scratch_bytes,
            "predict_scratch_bytes": program.scratch_bytes + q.input_dim + q.n_outputs}


def c_sizes(q: QuantizedModel) -> dict[str, int]:
    """The header's memory figures: weights_bytes (flash of the constants), scratch_bytes
    (int8 arrays on predict_int8's stack), predict_scratch_bytes (predict's: those and the
    int8 input and output)."""
    return _sizes(q, c_program(q, "model"))


def _largest_index(q: QuantizedModel) -> int:
    """The largest element count the code indexes with an int."""
    sizes = [q.input_dim, q.n_outputs]
    for layer in q.layers:
        sizes += [math.prod(layer.input_shape), math.prod(layer.output_shape)]
        if layer.kernel is not None:
            sizes.append(layer.kernel.size)
    return max(sizes)


def _c_header(q: QuantizedModel, name: str, program: CProgram) -> str:
    upper = name.upper()
    guard = f"MNISTNET_{upper}_H"
    sample = (f"an image {tuple(q.input_shape)} flattened, channels last"
              if len(q.input_shape) == 3 else "a row of features")
    about = [f"{name}.h: {name}_predict and {name}_predict_int8, an int8 neural network as "
             "plain C.", "", *q.about, "",
             f"int8: calibrated on {q.calibration_rows} rows (mnistnet.int8); "
             f"{q.exit_activation} in float at the exit.", "",
             f"{name}_predict(input, output) reads one sample, {upper}_INPUT_SIZE floats",
             f"({sample}), writes {upper}_OUTPUT_SIZE floats and returns 0.",
             f"{name}_predict_int8 does the same on int8 values: input quantised with",
             f"{upper}_INPUT_SCALE and _ZERO_POINT, output (before the {q.exit_activation})",
             f"with {upper}_OUTPUT_SCALE and _ZERO_POINT: real = scale * (q - zero point).",
             f"Float is used in {name}_predict only; -D{NO_FLOAT_FLAG} leaves it out.",
             "No allocation, no global state (thread-safe); "
             + (f"libm for {LIBM[q.exit_activation]} only." if q.exit_activation in LIBM
                else "no libm.")]
    sizes = _sizes(q, program)
    q_in, q_out = q.input_q, q.output_q
    return (_c_comment(about)
            + f"#ifndef {guard}\n#define {guard}\n\n#include <stdint.h>\n\n"
            + "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
            + f"#define {upper}_INPUT_SIZE {q.input_dim}\n"
            + f"#define {upper}_OUTPUT_SIZE {q.n_outputs}\n"
            + f"#define {upper}_INPUT_SCALE {c_float(q_in.scale)}\n"
            + f"#define {upper}_INPUT_ZERO_POINT ({q_in.zero_point})\n"
            + f"#define {upper}_OUTPUT_SCALE {c_float(q_out.scale)}\n"
            + f"#define {upper}_OUTPUT_ZERO_POINT ({q_out.zero_point})\n"
            + "/* flash: the int8 kernels and the int32 biases, multipliers and shifts */\n"
            + f"#define {upper}_WEIGHTS_BYTES {sizes['weights_bytes']}\n"
            + f"/* RAM: the int8 arrays on the stack of {name}_predict_int8, and of "
            + f"{name}_predict */\n"
            + f"#define {upper}_SCRATCH_BYTES {sizes['scratch_bytes']}\n"
            + f"#define {upper}_PREDICT_SCRATCH_BYTES {sizes['predict_scratch_bytes']}\n\n"
            + f"int {name}_predict_int8(const int8_t *input, int8_t *output);\n"
            + f"#ifndef {NO_FLOAT_FLAG}\n"
            + f"int {name}_predict(const float *input, float *output);\n#endif\n\n"
            + "#ifdef __cplusplus\n}\n#endif\n\n"
            + f"#endif /* {guard} */\n")


C_QUANTIZE_INPUT = Template("""\
/* round(x / scale) + zero point, clamped to int8, as mnistnet.int8.quantize_values: the
 * division in float, halves away from zero, NaN to -128. */
static int8_t quantize_input(float x)
{
    float v = x / ${upper}_INPUT_SCALE;
    int32_t whole;
    if (!(v >= ${low}))
        v = ${low}; /* and NaN */
    if (v > ${high})
        v = ${high};
    whole = (int32_t)v; /* towards zero; v - whole is exact */
    if (v - (float)whole >= 0.5f)
        ++whole;
    else if (v - (float)whole <= -0.5f)
        --whole;
    return (int8_t)(whole + ${upper}_INPUT_ZERO_POINT);
}
""")

C_PREDICT = Template("""\
int ${name}_predict(const float *input, float *output)
{
    int8_t q_input[${upper}_INPUT_SIZE];
    int8_t q_output[${upper}_OUTPUT_SIZE];
    for (int i = 0; i < ${upper}_INPUT_SIZE; ++i)
        q_input[i] = quantize_input(input[i]);
    ${name}_predict_int8(q_input, q_output);
    for (int i = 0; i < ${upper}_OUTPUT_SIZE; ++i)
        output[i] = ${upper}_OUTPUT_SCALE * (float)(q_output[i] - ${upper}_OUTPUT_ZERO_POINT);
${activate}    return 0;
}
""")


def _c_float_part(q: QuantizedModel, name: str) -> str:
    """predict: the only code with float, inside #ifndef MNISTNET_NO_FLOAT."""
    upper = name.upper()
    low, high = -128 - q.input_q.zero_point, 127 - q.input_q.zero_point
    activate, helper = "", ""
    if q.exit_activation != "linear":
        helper = C_ACTIVATIONS[q.exit_activation] + "\n"
        activate = (f"    for (int g = 0; g < {upper}_OUTPUT_SIZE; g += {q.exit_group})\n"
                    f"        {q.exit_activation}_inplace(output + g, {q.exit_group});\n")
    return (f"#ifndef {NO_FLOAT_FLAG}\n/* Float from here on only: the input's quantisation, "
            f"the outputs' dequantisation{' and ' + q.exit_activation if activate else ''}. "
            "*/\n\n"
            + C_QUANTIZE_INPUT.substitute(upper=upper, low=f"{low}.0f", high=f"{high}.0f")
            + "\n" + helper
            + C_PREDICT.substitute(name=name, upper=upper, activate=activate)
            + f"#endif /* {NO_FLOAT_FLAG} */\n")


def _c_source(q: QuantizedModel, program: CProgram) -> str:
    name = program.name
    about = [f"{name}.c: generated, do not edit (regenerate with mnistnet.int8 / "
             "mnistnet.export_int8).", "", *q.about, "",
             f"int8 constants: {program.weight_bytes} bytes of flash; {name}_predict_int8 keeps "
             f"the layer outputs in {program.scratch_bytes} bytes of stack."]
    buffers = [f"    int8_t {buffer}[{size}];" for buffer, size in program.buffers.items()]
    body = [f"    {statement}" for statement in program.statements]
    math_h = (f"#ifndef {NO_FLOAT_FLAG}\n#include <math.h> /* "
              f"{LIBM[q.exit_activation]}, in {name}_predict only */\n"
              f"#endif /* {NO_FLOAT_FLAG} */\n" if q.exit_activation in LIBM else "")
    affine = any(layer.kernel is not None for layer in q.layers)
    return "\n".join([
        _c_comment(about) + f'#include "{name}.h"\n\n#include <limits.h>\n' + math_h,
        f"#if INT_MAX < {_largest_index(q)}\n#error \"{name}.c indexes its arrays with int: "
        "it needs an int of 32 bits\"\n#endif\n",
        *([C_REQUANTIZE, C_DOT] if affine else []), *program.declarations,
        f"int {name}_predict_int8(const int8_t *input, int8_t *output)\n{{",
        *buffers, *([""] if buffers else []), *body, "    return 0;\n}\n",
        _c_float_part(q, name)])


def export_quantized_c(q: QuantizedModel, directory: str | os.PathLike,
                       name: str = "model") -> tuple[Path, Path]:
    """Write the int8 model `q` as C99, `directory/<name>.h` and `directory/<name>.c` (each
    atomically), and return their paths; see this module's docstring for what they hold.
    `name` must be a C identifier that is no C/C++ keyword (ValueError otherwise);
    `directory` is made if missing, with its parents."""
    check_c_name(name)
    check_output_folder(directory, f"output folder {directory}")
    program = c_program(q, name)
    folder = make_output_folder(directory, f"output folder {directory}")
    header, source = folder / f"{name}.h", folder / f"{name}.c"
    write_atomically(header, _c_header(q, name, program).encode())
    write_atomically(source, _c_source(q, program).encode())
    return header, source
