"""The table of layer kinds: everything mnistnet knows about a kind, in one entry.

A kind goes by one name, its Layer class's (Keras' name: "Conv2D"); its code is its place
in KINDS, the compiled side's `LayerKind` enum names it `KIND_<NAME>` (upper case) and is
checked against this table when this module is imported. Each entry says:

* layer: the Layer class (mnistnet.layers: its config, output shape and weights);
* fill / scratch: what the kind writes into its row of the layer plan beyond the shapes
  (mnistnet.plan fills those), and the forward scratch it needs per sample;
* takes_images, gemm, aliases_input, in_place, applied_at_input, keyed, batch_statistics,
  fuses_activation: facts the plan, the model and the CLI ask of it (its input is an (h, w, c)
  image; it is a GEMM of its input rows by a kernel, as Dense and Conv2D are; its output is
  its input's memory, as Flatten's; it may compute its output over its input's memory, when
  nothing reads that any more, as an Activation after a layer without one; as a model's first
  layer it is applied as the input rows are read, uint8 pixels through a table of its outputs
  for the 256 values, and the compiled net is the layers after it, as for Rescaling; it draws
  random numbers each training step; it reduces over the batch in training, as
  BatchNormalization does; its kernel applies an activation in the pass that writes its
  output, as Conv2D's tiles and BatchNormalization's normalisation apply a relu, so an
  in-place Activation after it hands its activation over);
* forward / backward (and update): its NumPy twin as the reference network runs it, calling
  the kernel twins of mnistnet.reference;
* onnx / c: its exporters (mnistnet.export calls them with its graph and C writer);
  IDENTITY for a kind that passes its input through at inference;
* token / grammar / parse: its part of the CLI's --layers grammar;
* keras / torch: its counterparts in the peers (`mnistnet bench --peers`), as data the
  standalone peers.py builds from.

Adding a kind: its Layer class, its kernel pair (mnistnet/_layers.pxi) with its twin
(mnistnet/reference.py), one entry here, its enum value in _kernels.pxd and one dispatch line
per phase in mnistnet/_network.pxi. tests/test_kinds.py then checks the new kind end to end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

import numpy as np

from mnistnet import layers, reference
from mnistnet.codes import ACTIVATIONS, conv2d_padded_shape
from mnistnet.layers import Layer, Shape

__all__ = ["IDENTITY", "KINDS", "Kind", "kind_of", "layer_from_config", "layer_to_config",
           "parse_layers"]


class _Identity:
    """The exporters' entry of a kind that is the identity at inference."""

    def __repr__(self) -> str:
        return "IDENTITY"


IDENTITY = _Identity()


@dataclass(frozen=True)
class Kind:
    """One layer kind (see the module docstring)."""

    layer: type[Layer]
    token: str
    grammar: str
    parse: Callable[[list[str], dict[str, str]], Layer]
    forward: Callable[..., tuple[np.ndarray, Any]]
    backward: Callable[..., np.ndarray]
    onnx: Callable[..., None] | _Identity
    c: Callable[..., Any] | _Identity
    keras: Callable[[Layer], dict[str, Any]]
    torch: Callable[[Layer, Shape, Shape], list[dict[str, Any]]] | None
    fill: Callable[[np.void, Layer, Shape, Shape], None] = lambda row, layer, ins, outs: None
    scratch: Callable[[np.void, Layer], int] = lambda row, layer: 0
    update: Callable[..., None] | None = None
    takes_images: bool = False
    gemm: bool = False
    aliases_input: bool = False
    in_place: bool = False
    applied_at_input: bool = False
    keyed: bool = False
    batch_statistics: bool = False
    fuses_activation: bool = False

    @property
    def name(self) -> str:
        """The kind's one name: its Layer class's."""
        return self.layer.__name__

    @property
    def code(self) -> int:
        """Its number in the plan and the compiled side's enum: its place in KINDS."""
        return _CODES[self.name]

    @property
    def enum(self) -> str:
        """Its name in the compiled side's LayerKind enum."""
        return f"KIND_{self.name.upper()}"

    @property
    def identity_at_inference(self) -> bool:
        return self.onnx is IDENTITY

    def __repr__(self) -> str:
        return f"<kind {self.name}>"


# ---- what several kinds share --------------------------------------------------------------

def _window_fields(row: np.void, window: tuple[int, int], strides: tuple[int, int],
                   pads: tuple[int, int]) -> None:
    row["k_h"], row["k_w"] = window
    row["s_h"], row["s_w"] = strides
    row["pad_top"], row["pad_left"] = pads


def _per_output(row: np.void, layer: Layer) -> int:
    """Scratch of one float (or int32) per output element: an argmax, a mask, an xhat."""
    return int(row["n_out"])


def _passes_through(plan, params, i, inp, training, key):
    return inp.copy(), None


def _gradient_passes_through(plan, params, grads, i, dz, inp, keep):
    return dz


def _same_shape_grammar(fields: list[str], options: dict[str, str], kind: str) -> None:
    if fields or options:
        raise ValueError(f"{kind} takes no values")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _size(text: str) -> int | tuple[int, int]:
    """"3" or "3x5"."""
    if "x" in text:
        h, _, w = text.partition("x")
        return _int(h), _int(w)
    return _int(text)


def _window_options(options: dict[str, str]) -> dict[str, Any]:
    unknown = set(options) - {"stride", "padding"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (stride=S, padding=valid|same)")
    out: dict[str, Any] = {}
    if "stride" in options:
        out["strides"] = _size(options["stride"])
    if "padding" in options:
        out["padding"] = options["padding"]
    return out


def _fraction_layer(make: Callable[[float], Layer], text: str, what: str) -> Layer:
    """make(float(text)); any bad value said as `what` (e.g. "a fraction in [0, 1]")."""
    try:
        return make(float(text))
    except ValueError:
        raise ValueError(f"{what}, got {text!r}") from None


def _keras(name: str, layer: Layer, **config: Any) -> dict[str, Any]:
    """A Keras layer: its class name in keras.layers and its arguments (lists as tuples)."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return {"class": name, "config": config}


def _torch(module: str, *args: Any, init: bool = False, **kwargs: Any) -> dict[str, Any]:
    """A torch.nn module (or one of peers.py's own) and its arguments; init: Glorot-uniform
    weights and zero biases, as Keras initialises them."""
    return {"module": module, "args": list(args), "kwargs": kwargs, "init": init}


def _torch_same_padding(layer: Layer, ins: Shape, window: tuple[int, int], fill: float,
                        ) -> list[dict[str, Any]]:
    """Keras' "same" padding (the extra one after) as a padding module before the window."""
    if layer.padding != "same":
        return []
    (top, bottom), (left, right) = (
        _pads(size, k, s, "same") for size, k, s in zip(ins[:2], window, layer.strides,
                                                          strict=True))
    if fill == 0:
        return [_torch("ZeroPad2d", (left, right, top, bottom))]
    return [_torch("ConstantPad2d", (left, right, top, bottom), fill)]


def _pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of a window sliding along one axis, as Keras pads."""
    out, before = reference.window_geometry(size, window, stride, padding)
    return before, max((out - 1) * stride + window - size, 0) - before


def _activation_grammar(fields: list[str], index: int) -> str:
    return fields[index] if len(fields) > index else "linear"


# ---- Dense ---------------------------------------------------------------------------------

def _dense_parse(fields: list[str], options: dict[str, str]) -> Layer:
    units, *rest = fields
    if len(rest) != 1 or not rest[0] or options:
        raise ValueError("expected UNITS:ACT")
    return layers.Dense(_int(units), activation=rest[0])


def _gemm_forward(plan, params, i, inp, training, key):
    w, b = plan.kernel_and_bias(params, i)
    return reference.dense_forward(None, inp, w, b), None


def _gemm_backward(plan, params, grads, i, dz, inp, keep):
    w, _ = plan.kernel_and_bias(params, i)
    gw, gb = plan.kernel_and_bias(grads, i)
    return reference.dense_backward(None, gw, gb, dz, inp, w)[0]


def _onnx_dense(g, step, name):
    kernel, bias = step.weights
    g.apply("Gemm", name, g.constant(f"{name}_kernel", kernel), g.constant(f"{name}_bias", bias))


# Each computing layer becomes a function with its sizes written in: the compiler then knows
# every trip count and vectorises the loops at -O2 (its cheapest cost model needs that). The
# sums go to a local array, not through `out`, which could alias `in` as far as it knows.
C_DENSE = Template("""\
static void ${function}(const float *in, float *out)
{
    float sum[${n_out}];
    for (int j = 0; j < ${n_out}; ++j)
        sum[j] = ${name}_bias[j];
    for (int i = 0; i < ${n_in}; ++i)
        for (int j = 0; j < ${n_out}; ++j)
            sum[j] += in[i] * ${name}_kernel[i * ${n_out} + j];
${activate}    for (int j = 0; j < ${n_out}; ++j)
        out[j] = sum[j];
}
""")


def _c_dense(w):
    n_in, n_out = w.step.weights[0].shape
    return w.function(C_DENSE, 1, w.kernel_and_bias(), n_in=n_in, n_out=n_out)


def _keras_dense(layer):
    config = {"units": layer.units, "activation": layer.activation}
    if layer.l2:
        config["kernel_regularizer"] = {"l2": layer.l2}
    return _keras("Dense", layer, **config)


def _torch_dense(layer, ins, outs):
    return [_torch("Linear", ins[0], layer.units, init=True)]


# ---- Conv2D --------------------------------------------------------------------------------

def _conv_fill(row, layer, ins, outs):
    _, _, pt, pl = layer.geometry(ins)
    _window_fields(row, layer.kernel_size, layer.strides, (pt, pl))
    row["gemm_rows"] = outs[0] * outs[1]
    row["fan_in"] = layer.kernel_size[0] * layer.kernel_size[1] * ins[2]


def _conv_scratch(row, layer):
    """The padded copy of the input its windows read, when the layer pads (else they read
    the input itself: no scratch)."""
    image = (int(row["in_h"]), int(row["in_w"]), int(row["in_c"]))
    shape = conv2d_padded_shape(image, layer.kernel_size, layer.strides, layer.padding)
    return 0 if shape == image else math.prod(shape)


def _conv_parse(fields, options):
    if len(fields) not in (2, 3):
        raise ValueError("expected conv:FILTERS:KERNEL[:ACT][:stride=S][:padding=same]")
    return layers.Conv2D(_int(fields[0]), _size(fields[1]),
                         activation=_activation_grammar(fields, 2), **_window_options(options))


def _conv_forward(plan, params, i, inp, training, key):
    layer = plan.layers[i]
    w, b = plan.kernel_and_bias(params, i)
    padded = np.empty((inp.shape[0], *reference.conv2d_padded_shape(
        inp.shape[1:], layer.kernel_size, layer.strides, layer.padding)), np.float32)
    out = reference.conv2d_forward(None, padded, inp, w, b, layer.strides, layer.padding)
    return out, padded


def _conv_backward(plan, params, grads, i, dz, inp, padded):
    layer = plan.layers[i]
    w, _ = plan.kernel_and_bias(params, i)
    gw, gb = plan.kernel_and_bias(grads, i)
    return reference.conv2d_backward(None, gw, gb, dz, padded, inp, w, layer.strides,
                                     layer.padding)[0]


def _onnx_conv2d(g, step, name):
    kernel, bias = step.weights
    g.to_layout("NCHW", f"{name}_to_nchw")
    # Keras' kernel is (kh, kw, in, out); ONNX's is (out, in, kh, kw).
    g.apply("Conv", name, g.constant(f"{name}_kernel", kernel.transpose(3, 2, 0, 1)),
            g.constant(f"{name}_bias", bias), **g.window_attributes(step, step.layer.kernel_size))


# Keras' Conv2D is a cross-correlation; window positions in the padding read as zeros, so
# they are skipped.
C_CONV2D = Template("""\
static void ${function}(const float *in, float *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy) {
        for (int ox = 0; ox < ${out_w}; ++ox) {
            float sum[${out_c}];
            for (int f = 0; f < ${out_c}; ++f)
                sum[f] = ${name}_bias[f];
            for (int ky = 0; ky < ${k_h}; ++ky) {
                const int iy = oy * ${s_h} + ky - ${pad_top};
                if (iy < 0 || iy >= ${in_h})
                    continue; /* outside the image: padding */
                for (int kx = 0; kx < ${k_w}; ++kx) {
                    const int ix = ox * ${s_w} + kx - ${pad_left};
                    if (ix < 0 || ix >= ${in_w})
                        continue;
                    const float *x = in + (iy * ${in_w} + ix) * ${in_c};
                    const float *w = ${name}_kernel + (ky * ${k_w} + kx) * ${in_c} * ${out_c};
                    for (int c = 0; c < ${in_c}; ++c)
                        for (int f = 0; f < ${out_c}; ++f)
                            sum[f] += x[c] * w[c * ${out_c} + f];
                }
            }
${activate}            for (int f = 0; f < ${out_c}; ++f)
                out[(oy * ${out_w} + ox) * ${out_c} + f] = sum[f];
        }
    }
}
""")


def _c_conv2d(w):
    return w.function(C_CONV2D, 3, w.kernel_and_bias(), **w.window(w.step.layer.kernel_size))


def _keras_conv2d(layer):
    config = {"filters": layer.filters, "kernel_size": layer.kernel_size,
              "strides": layer.strides, "padding": layer.padding,
              "activation": layer.activation}
    if layer.l2:
        config["kernel_regularizer"] = {"l2": layer.l2}
    return _keras("Conv2D", layer, **config)


def _torch_conv2d(layer, ins, outs):
    return [*_torch_same_padding(layer, ins, layer.kernel_size, 0.0),
            _torch("Conv2d", ins[2], layer.filters, list(layer.kernel_size),
                   stride=list(layer.strides), init=True)]


# ---- MaxPool2D -----------------------------------------------------------------------------

def _pool_fill(row, layer, ins, outs):
    _, _, pt, pl = layer.geometry(ins)
    _window_fields(row, layer.pool_size, layer.strides, (pt, pl))


def _pool_parse(layer_class):
    def parse(fields, options):
        if len(fields) != 1:
            raise ValueError("expected SIZE[:stride=S][:padding=same]")
        return layer_class(_size(fields[0]), **_window_options(options))
    return parse


def _maxpool_forward(plan, params, i, inp, training, key):
    layer = plan.layers[i]
    return reference.maxpool2d_forward(None, None, inp, layer.pool_size, layer.strides,
                                       layer.padding)


def _maxpool_backward(plan, params, grads, i, dz, inp, argmax):
    return reference.maxpool2d_backward(None, dz, argmax, inp.shape)


def _onnx_maxpool2d(g, step, name):
    g.to_layout("NCHW", f"{name}_to_nchw")
    # ONNX's MaxPool pads never win the max, as Keras'.
    g.apply("MaxPool", name, **g.window_attributes(step, step.layer.pool_size))


# Keras' MaxPooling2D: positions in the padding are skipped, so the padding never wins (and
# every window holds at least one input pixel).
C_MAXPOOL2D = Template("""\
static void ${function}(const float *in, float *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy) {
        for (int ox = 0; ox < ${out_w}; ++ox) {
            float best[${out_c}];
            for (int c = 0; c < ${out_c}; ++c)
                best[c] = -HUGE_VALF;
            for (int ky = 0; ky < ${k_h}; ++ky) {
                const int iy = oy * ${s_h} + ky - ${pad_top};
                if (iy < 0 || iy >= ${in_h})
                    continue; /* outside the image: padding */
                for (int kx = 0; kx < ${k_w}; ++kx) {
                    const int ix = ox * ${s_w} + kx - ${pad_left};
                    if (ix < 0 || ix >= ${in_w})
                        continue;
                    const float *x = in + (iy * ${in_w} + ix) * ${in_c};
                    for (int c = 0; c < ${out_c}; ++c)
                        best[c] = x[c] > best[c] ? x[c] : best[c];
                }
            }
            for (int c = 0; c < ${out_c}; ++c)
                out[(oy * ${out_w} + ox) * ${out_c} + c] = best[c];
        }
    }
}
""")


def _c_maxpool2d(w):
    return w.function(C_MAXPOOL2D, 3, **w.window(w.step.layer.pool_size))


def _keras_pool(keras_name):
    def keras(layer):
        return _keras(keras_name, layer, pool_size=layer.pool_size, strides=layer.strides,
                      padding=layer.padding)
    return keras


def _torch_maxpool2d(layer, ins, outs):
    return [*_torch_same_padding(layer, ins, layer.pool_size, -math.inf),
            _torch("MaxPool2d", list(layer.pool_size), stride=list(layer.strides))]


# ---- AveragePooling2D and GlobalAveragePooling2D (one kernel pair: a global pooling is one
# window the size of the image) ---------------------------------------------------------------

def _global_pool_fill(row, layer, ins, outs):
    _window_fields(row, (ins[0], ins[1]), (1, 1), (0, 0))


def _avgpool_forward(plan, params, i, inp, training, key):
    layer = plan.layers[i]
    return reference.avgpool2d_forward(None, inp, layer.pool_size, layer.strides,
                                       layer.padding), None


def _avgpool_backward(plan, params, grads, i, dz, inp, keep):
    layer = plan.layers[i]
    return reference.avgpool2d_backward(None, dz, inp.shape, layer.pool_size, layer.strides,
                                        layer.padding)


def _global_pool_forward(plan, params, i, inp, training, key):
    image = inp.shape[1:3]
    return reference.avgpool2d_forward(None, inp, image).reshape(inp.shape[0], -1), None


def _global_pool_backward(plan, params, grads, i, dz, inp, keep):
    image = inp.shape[1:3]
    return reference.avgpool2d_backward(None, dz.reshape(inp.shape[0], 1, 1, -1), inp.shape,
                                        image)


def _onnx_avgpool2d(g, step, name):
    g.to_layout("NCHW", f"{name}_to_nchw")
    # count_include_pad=0: the padding is left out of the mean, as Keras'.
    g.apply("AveragePool", name, count_include_pad=0,
            **g.window_attributes(step, step.layer.pool_size))


def _onnx_global_avgpool2d(g, step, name):
    g.to_layout("NCHW", f"{name}_to_nchw")
    g.apply("GlobalAveragePool", name)
    g.apply("Flatten", f"{name}_flat", axis=1, layout="flat")


# Keras' AveragePooling2D: positions in the padding are skipped and not counted.
C_AVGPOOL2D = Template("""\
static void ${function}(const float *in, float *out)
{
    for (int oy = 0; oy < ${out_h}; ++oy) {
        for (int ox = 0; ox < ${out_w}; ++ox) {
            float sum[${out_c}];
            int count = 0;
            for (int c = 0; c < ${out_c}; ++c)
                sum[c] = 0.0f;
            for (int ky = 0; ky < ${k_h}; ++ky) {
                const int iy = oy * ${s_h} + ky - ${pad_top};
                if (iy < 0 || iy >= ${in_h})
                    continue; /* outside the image: padding */
                for (int kx = 0; kx < ${k_w}; ++kx) {
                    const int ix = ox * ${s_w} + kx - ${pad_left};
                    if (ix < 0 || ix >= ${in_w})
                        continue;
                    const float *x = in + (iy * ${in_w} + ix) * ${in_c};
                    for (int c = 0; c < ${out_c}; ++c)
                        sum[c] += x[c];
                    ++count;
                }
            }
            for (int c = 0; c < ${out_c}; ++c)
                out[(oy * ${out_w} + ox) * ${out_c} + c] = sum[c] / (float)count;
        }
    }
}
""")

C_GLOBAL_AVGPOOL2D = Template("""\
static void ${function}(const float *in, float *out)
{
    float sum[${channels}];
    for (int c = 0; c < ${channels}; ++c)
        sum[c] = 0.0f;
    for (int p = 0; p < ${pixels}; ++p)
        for (int c = 0; c < ${channels}; ++c)
            sum[c] += in[p * ${channels} + c];
    for (int c = 0; c < ${channels}; ++c)
        out[c] = sum[c] / (float)${pixels};
}
""")


def _c_avgpool2d(w):
    return w.function(C_AVGPOOL2D, 3, **w.window(w.step.layer.pool_size))


def _c_global_avgpool2d(w):
    h, wd, c = w.step.input_shape
    return w.function(C_GLOBAL_AVGPOOL2D, 1, pixels=h * wd, channels=c)


def _torch_avgpool2d(layer, ins, outs):
    # Padding left out of the mean; the extra "same" one after comes from ceil_mode.
    pads = [_pads(size, k, s, layer.padding)[0]
            for size, k, s in zip(ins[:2], layer.pool_size, layer.strides, strict=True)]
    return [_torch("AvgPool2d", list(layer.pool_size), stride=list(layer.strides),
                   padding=pads, ceil_mode=layer.padding == "same", count_include_pad=False)]


def _global_pool_parse(fields, options):
    _same_shape_grammar(fields, options, "gap")
    return layers.GlobalAveragePooling2D()


# ---- Flatten -------------------------------------------------------------------------------

def _flatten_parse(fields, options):
    _same_shape_grammar(fields, options, "flatten")
    return layers.Flatten()


def _flatten_forward(plan, params, i, inp, training, key):
    return inp.reshape(inp.shape[0], -1), None


def _flatten_backward(plan, params, grads, i, dz, inp, keep):
    return dz.reshape(inp.shape)


def _onnx_flatten(g, step, name):
    if g.layout == "flat":
        return
    g.to_layout("NHWC", f"{name}_to_nhwc")  # Keras flattens in (h, w, c) order
    g.apply("Flatten", name, axis=1, layout="flat")


def _c_flatten(w):
    return w.identity("a channels-last image already is the flattened row")


# ---- Dropout -------------------------------------------------------------------------------

def _dropout_fill(row, layer, ins, outs):
    row["rate"] = layer.rate


def _dropout_parse(fields, options):
    if len(fields) != 1 or options:
        raise ValueError("expected dropout:RATE")
    return _fraction_layer(layers.Dropout, fields[0], "dropout rate must be a number in [0, 1)")


def _dropout_forward(plan, params, i, inp, training, key):
    rate = plan.layers[i].rate
    if not training or rate == 0:
        return inp.copy(), None
    return reference.dropout_forward(None, None, inp, rate, key)


def _dropout_backward(plan, params, grads, i, dz, inp, mask):
    return dz if mask is None else reference.dropout_backward(None, dz, mask)


def _torch_dropout(layer, ins, outs):
    return [_torch("Dropout", layer.rate)]


# ---- Activation ----------------------------------------------------------------------------

def _activation_parse(fields, options):
    if len(fields) != 1 or options:
        raise ValueError("expected act:ACT")
    return layers.Activation(fields[0])


def _onnx_activation_layer(g, step, name):
    """Nothing of its own: its activation follows, as every layer's does."""


# An Activation layer and BatchNormalization at inference (its moving statistics, with
# invstd = 1 / sqrt(variance + epsilon) as the compiled kernel rounds it), pixel by pixel.
C_ACTIVATION = Template("""\
static void ${function}(const float *in, float *out)
{
    for (int p = 0; p < ${pixels}; ++p) {
        float sum[${channels}];
        for (int c = 0; c < ${channels}; ++c)
            sum[c] = in[p * ${channels} + c];
${activate}        for (int c = 0; c < ${channels}; ++c)
            out[p * ${channels} + c] = sum[c];
    }
}
""")


def _c_activation_layer(w):
    return w.function(C_ACTIVATION, 2, **w.pixels_and_channels())


def _keras_activation(layer):
    return _keras("Activation", layer, activation=layer.activation)


# ---- RandomTranslation ---------------------------------------------------------------------

def _translate_fill(row, layer, ins, outs):
    row["shift_h0"], row["shift_h1"], row["shift_w0"], row["shift_w1"] = layer.shift_range(ins)
    row["fill"] = layer.fill_value


def _translate_parse(fields, options):
    if len(fields) != 1 or options:
        raise ValueError("expected translate:FRACTION")
    return _fraction_layer(lambda f: layers.RandomTranslation(f, f), fields[0],
                           "translate takes a fraction in [0, 1]")


def _translate_forward(plan, params, i, inp, training, key):
    if not training:
        return inp.copy(), None
    row = plan.table[i]
    shifts = reference.translate_shifts(key, inp.shape[0], *(int(row[f]) for f in (
        "shift_h0", "shift_h1", "shift_w0", "shift_w1")))
    return reference.translate_forward(None, inp, *shifts, row["fill"]), shifts


def _translate_backward(plan, params, grads, i, dz, inp, shifts):
    return dz if shifts is None else reference.translate_backward(None, dz, *shifts)


def _keras_translate(layer):
    return _keras("RandomTranslation", layer, height_factor=layer.height_factor,
                  width_factor=layer.width_factor, fill_mode="constant",
                  interpolation="nearest", fill_value=layer.fill_value)


def _torch_translate(layer, ins, outs):
    # peers.py's own module: whole-pixel random shifts with a constant fill.
    return [_torch("RandomTranslation", list(layer.shift_range(ins)), layer.fill_value)]


# ---- BatchNormalization --------------------------------------------------------------------

def _batchnorm_fill(row, layer, ins, outs):
    row["momentum"], row["epsilon"] = layer.momentum, layer.epsilon


def _batchnorm_parse(fields, options):
    _same_shape_grammar(fields, options, "bn")
    return layers.BatchNormalization()


def _batchnorm_forward(plan, params, i, inp, training, key):
    gamma, beta, moving_mean, moving_var = plan.weights_of(params, i)
    epsilon = plan.table[i]["epsilon"]
    if not training:
        return reference.batchnorm_inference(None, inp, gamma, beta, moving_mean, moving_var,
                                             epsilon), None
    z, *keep = reference.batchnorm_forward(None, None, None, None, None, inp, gamma, beta,
                                           epsilon)
    return z, keep


def _batchnorm_backward(plan, params, grads, i, dz, inp, keep):
    gamma = plan.weights_of(params, i)[0]
    dgamma, dbeta, dmean, dvar = plan.weights_of(grads, i)
    xhat, _, _, invstd = keep
    dinp, _, _ = reference.batchnorm_backward(None, dgamma, dbeta, dz, xhat, gamma, invstd)
    dmean[...] = dvar[...] = 0
    return dinp


def _batchnorm_update(plan, params, i, keep):
    """The moving averages from the step's batch statistics."""
    _, _, moving_mean, moving_var = plan.weights_of(params, i)
    _, mean, var, _ = keep
    momentum = plan.table[i]["momentum"]
    reference.moving_average_update(moving_mean, mean, momentum)
    reference.moving_average_update(moving_var, var, momentum)


def _onnx_batchnorm(g, step, name):
    # Inference: the moving statistics. ONNX normalises axis 1, an image's channels in NCHW.
    gamma, beta, mean, variance = step.weights
    if g.layout == "NHWC":
        g.to_layout("NCHW", f"{name}_to_nchw")
    g.apply("BatchNormalization", name, g.constant(f"{name}_gamma", gamma),
            g.constant(f"{name}_beta", beta), g.constant(f"{name}_mean", mean),
            g.constant(f"{name}_variance", variance), epsilon=step.layer.epsilon)


C_BATCHNORM = Template("""\
static void ${function}(const float *in, float *out)
{
    for (int p = 0; p < ${pixels}; ++p) {
        float sum[${channels}];
        for (int c = 0; c < ${channels}; ++c)
            sum[c] = ${name}_gamma[c] * ((in[p * ${channels} + c] - ${name}_mean[c])
                                         * ${name}_invstd[c]) + ${name}_beta[c];
${activate}        for (int c = 0; c < ${channels}; ++c)
            out[p * ${channels} + c] = sum[c];
    }
}
""")


def _c_batchnorm(w):
    layer = w.step.layer
    gamma, beta, mean, variance = w.step.weights
    invstd = (1.0 / np.sqrt(variance.astype(np.float64) + layer.epsilon)).astype(np.float32)
    what = f"layer {w.step.index}: layers.BatchNormalization"
    constants = [w.array("gamma", gamma, f"{what} gamma"),
                 w.array("beta", beta, f"{what} beta"),
                 w.array("mean", mean, f"{what} moving mean"),
                 w.array("invstd", invstd,
                         f"{what} 1 / sqrt(moving variance + {layer.epsilon})")]
    return w.function(C_BATCHNORM, 2, constants, **w.pixels_and_channels())


def _keras_batchnorm(layer):
    return _keras("BatchNormalization", layer, momentum=layer.momentum,
                  epsilon=layer.epsilon)


def _torch_batchnorm(layer, ins, outs):
    module = "BatchNorm2d" if len(ins) == 3 else "BatchNorm1d"
    # PyTorch's momentum weighs the new batch: Keras' 1 - momentum.
    return [_torch(module, ins[-1], eps=layer.epsilon, momentum=1 - layer.momentum)]


# ---- Rescaling -----------------------------------------------------------------------------

def _rescaling_fill(row, layer, ins, outs):
    row["scale"], row["offset"] = layer.scale, layer.offset


def _number(text: str) -> float:
    """"0.5", "1e-3" or a fraction "1/255"."""
    top, slash, bottom = text.partition("/")
    try:
        value = float(top) / float(bottom) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or a fraction A/B: {text!r}") from None
    return value


def _rescaling_parse(fields, options):
    if len(fields) not in (1, 2) or options:
        raise ValueError("expected rescale:SCALE[:OFFSET], e.g. rescale:1/255")
    return layers.Rescaling(*(_number(f) for f in fields))


def _rescaling_forward(plan, params, i, inp, training, key):
    row = plan.table[i]
    return reference.rescaling_forward(None, inp, row["scale"], row["offset"]), None


def _rescaling_backward(plan, params, grads, i, dz, inp, keep):
    return reference.rescaling_backward(None, dz, plan.table[i]["scale"])


def _onnx_rescaling(g, step, name):
    # In float32, as ONNX's Mul and Add compute: within one rounding of predict's (double).
    g.apply("Mul", name, g.constant(f"{name}_scale", np.array(step.layer.scale)))
    if step.layer.offset:
        g.apply("Add", f"{name}_shifted", g.constant(f"{name}_offset",
                                                     np.array(step.layer.offset)))


# In double, rounded once to float, as mnistnet computes it (the literals are doubles).
C_RESCALING = Template("""\
static void ${function}(const float *in, float *out)
{
    for (int i = 0; i < ${size}; ++i)
        out[i] = (float)((double)in[i] * ${scale} + ${offset});
}
""")


def _c_rescaling(w):
    layer = w.step.layer
    return w.function(C_RESCALING, 1, size=math.prod(w.step.output_shape),
                      scale=repr(layer.scale), offset=repr(layer.offset))


def _torch_rescaling(layer, ins, outs):
    # peers.py's own module: x * scale + offset.
    return [_torch("Rescaling", layer.scale, layer.offset)]


# ---- the table -----------------------------------------------------------------------------

KINDS: tuple[Kind, ...] = (
    Kind(layers.Dense, token="dense", grammar="UNITS:ACT (or dense:UNITS:ACT)",
         parse=_dense_parse, forward=_gemm_forward, backward=_gemm_backward, onnx=_onnx_dense,
         c=_c_dense, keras=_keras_dense, torch=_torch_dense, gemm=True),
    Kind(layers.Conv2D, token="conv",
         grammar="conv:FILTERS:KERNEL[:ACT][:stride=S][:padding=same]", parse=_conv_parse,
         forward=_conv_forward, backward=_conv_backward, onnx=_onnx_conv2d, c=_c_conv2d,
         keras=_keras_conv2d, torch=_torch_conv2d, fill=_conv_fill, scratch=_conv_scratch,
         takes_images=True, gemm=True, fuses_activation=True),
    Kind(layers.MaxPool2D, token="pool", grammar="pool:SIZE[:stride=S][:padding=same]",
         parse=_pool_parse(layers.MaxPool2D), forward=_maxpool_forward,
         backward=_maxpool_backward, onnx=_onnx_maxpool2d, c=_c_maxpool2d,
         keras=_keras_pool("MaxPooling2D"), torch=_torch_maxpool2d, fill=_pool_fill,
         scratch=_per_output, takes_images=True),
    Kind(layers.Flatten, token="flatten", grammar="flatten", parse=_flatten_parse,
         forward=_flatten_forward, backward=_flatten_backward, onnx=_onnx_flatten,
         c=_c_flatten, keras=lambda layer: _keras("Flatten", layer),
         torch=lambda layer, ins, outs: [_torch("Flatten")], aliases_input=True),
    Kind(layers.Dropout, token="dropout", grammar="dropout:RATE", parse=_dropout_parse,
         forward=_dropout_forward, backward=_dropout_backward, onnx=IDENTITY, c=IDENTITY,
         keras=lambda layer: _keras("Dropout", layer, rate=layer.rate), torch=_torch_dropout,
         fill=_dropout_fill, scratch=_per_output, keyed=True),
    Kind(layers.Activation, token="act", grammar="act:ACT (an Activation layer)",
         parse=_activation_parse, forward=_passes_through, backward=_gradient_passes_through,
         onnx=_onnx_activation_layer, c=_c_activation_layer, keras=_keras_activation,
         torch=lambda layer, ins, outs: [], in_place=True),
    Kind(layers.RandomTranslation, token="translate", grammar="translate:FRACTION",
         parse=_translate_parse, forward=_translate_forward, backward=_translate_backward,
         onnx=IDENTITY, c=IDENTITY, keras=_keras_translate, torch=_torch_translate,
         fill=_translate_fill, takes_images=True, keyed=True),
    Kind(layers.BatchNormalization, token="bn", grammar="bn (BatchNormalization)",
         parse=_batchnorm_parse, forward=_batchnorm_forward, backward=_batchnorm_backward,
         update=_batchnorm_update, onnx=_onnx_batchnorm, c=_c_batchnorm,
         keras=_keras_batchnorm, torch=_torch_batchnorm, fill=_batchnorm_fill,
         batch_statistics=True, fuses_activation=True),
    Kind(layers.AveragePooling2D, token="avgpool",
         grammar="avgpool:SIZE[:stride=S][:padding=same]",
         parse=_pool_parse(layers.AveragePooling2D), forward=_avgpool_forward,
         backward=_avgpool_backward, onnx=_onnx_avgpool2d, c=_c_avgpool2d,
         keras=_keras_pool("AveragePooling2D"), torch=_torch_avgpool2d, fill=_pool_fill,
         takes_images=True),
    Kind(layers.GlobalAveragePooling2D, token="gap", grammar="gap (GlobalAveragePooling2D)",
         parse=_global_pool_parse, forward=_global_pool_forward,
         backward=_global_pool_backward, onnx=_onnx_global_avgpool2d, c=_c_global_avgpool2d,
         keras=lambda layer: _keras("GlobalAveragePooling2D", layer),
         torch=lambda layer, ins, outs: [_torch("AdaptiveAvgPool2d", 1), _torch("Flatten")],
         fill=_global_pool_fill, takes_images=True),
    Kind(layers.Rescaling, token="rescale",
         grammar="rescale:SCALE[:OFFSET] (Rescaling; SCALE may be a fraction, e.g. 1/255)",
         parse=_rescaling_parse, forward=_rescaling_forward, backward=_rescaling_backward,
         onnx=_onnx_rescaling, c=_c_rescaling,
         keras=lambda layer: _keras("Rescaling", layer, scale=layer.scale,
                                    offset=layer.offset),
         torch=_torch_rescaling, fill=_rescaling_fill, applied_at_input=True),
)

_CODES: dict[str, int] = {kind.name: code for code, kind in enumerate(KINDS)}
_BY_CLASS: dict[type[Layer], Kind] = {kind.layer: kind for kind in KINDS}
_BY_TOKEN: dict[str, Kind] = {kind.token: kind for kind in KINDS}
_BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}


def kind_of(layer: Layer | type[Layer] | str) -> Kind:
    """The kind of a layer (or of a Layer class, or named by its class name)."""
    key: Any = layer if isinstance(layer, (str, type)) else type(layer)
    kind = (_BY_NAME if isinstance(key, str) else _BY_CLASS).get(key)
    if kind is None:
        name = key if isinstance(key, str) else key.__name__
        raise ValueError(f"unknown layer kind {name!r}; valid: {', '.join(_BY_NAME)}")
    return kind


def layer_to_config(layer: Layer) -> dict[str, Any]:
    """{"class": name, **config}: what a model file records of a layer."""
    return {"class": kind_of(layer).name, **layer.get_config()}


def layer_from_config(config: dict[str, Any]) -> Layer:
    """The inverse of layer_to_config; a config without "class" is a Dense (format 1)."""
    config = dict(config)
    name = config.pop("class", "Dense")
    if not isinstance(name, str) or name not in _BY_NAME:
        raise ValueError(f"unknown layer class {name!r}; valid: {', '.join(_BY_NAME)}")
    return _BY_NAME[name].layer(**config)


# ---- the CLI's --layers grammar -------------------------------------------------------------

def layers_grammar() -> str:
    """The grammar of every kind, for --help and error messages."""
    return (", ".join(kind.grammar for kind in KINDS)
            + "; KERNEL, SIZE and S an int or HxW; activations: " + ", ".join(ACTIVATIONS))


def parse_layer(item: str) -> Layer:
    """One item of --layers ("conv:32:3:relu", "128:relu", "bn", ...) as a layer; the
    layer's own checks give the errors for bad values."""
    token, *fields = [f.strip() for f in item.split(":")]
    options = dict(f.split("=", 1) for f in fields if "=" in f)
    fields = [f for f in fields if "=" not in f]
    if token.lstrip("+-").isdigit():  # UNITS:ACT, the dense layer's short form
        fields, token = [token, *fields], "dense"
    kind = _BY_TOKEN.get(token)
    if kind is None:
        raise ValueError(f"unknown layer {token!r}; expected {layers_grammar()}")
    return kind.parse(fields, options)


def parse_layers(text: str) -> list[Layer]:
    """Layers from "conv:32:3:relu,pool:2,flatten,dropout:0.5,10:softmax"; a ValueError
    names the item that does not parse."""
    layers = []
    for item in text.split(","):
        item = item.strip()
        try:
            layers.append(parse_layer(item))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return layers


# ---- the peers ---------------------------------------------------------------------------

def peer_layers(layers: Sequence[Layer], shapes: Sequence[Shape]) -> list[dict[str, Any]]:
    """Each layer as the peers build it (peers.py): its Keras layer, its PyTorch modules
    (None: PyTorch has no counterpart) and its activation."""
    specs = []
    for i, layer in enumerate(layers):
        kind = kind_of(layer)
        torch = None if kind.torch is None else kind.torch(layer, shapes[i], shapes[i + 1])
        specs.append({"kind": kind.name, "keras": kind.keras(layer), "torch": torch,
                      "activation": layer.activation})
    return specs


# ---- the compiled side's enum, checked ---------------------------------------------------

def check_compiled_kinds(compiled: dict[str, int]) -> None:
    """Raise ImportError unless the compiled LayerKind enum ({"KIND_DENSE": 0, ...}) names
    the same kinds with the same codes as this table."""
    expected = {kind.enum: kind.code for kind in KINDS}
    if compiled != expected:
        missing = sorted(set(expected.items()) ^ set(compiled.items()))
        raise ImportError(f"mnistnet: the compiled kernels' layer kinds differ from "
                          f"mnistnet.kinds.KINDS (a build mismatch: rebuild the extension); "
                          f"differing entries: {missing}")


def _check_compiled() -> None:
    from mnistnet import fast

    check_compiled_kinds(fast.compiled_kinds())


_check_compiled()
