"""An int8 model (mnistnet.int8.QuantizedModel) as an ONNX graph in the QDQ format.

    q = mn.quantize(model, x_train[:1000])
    q.export_onnx("model_int8.onnx")     # needs the optional extra mnistnet[onnx]

Standard operators only (QuantizeLinear, DequantizeLinear, Gemm, Conv, MaxPool, AveragePool,
Relu, Tanh, Sigmoid, Transpose, Flatten, Softmax), opset 13 or later: each weight is an int8
initializer with its per-channel scales read through DequantizeLinear, each bias an int32 one
(scale input_scale * weight_scale, zero point 0), and each layer's output passes through
QuantizeLinear and DequantizeLinear with its scale and zero point. A runtime may run the
float operators between them, or fuse the pattern into integer kernels (onnxruntime does).
A hidden tanh or sigmoid (a table in the twin) is the float operator between its input's
DequantizeLinear and a QuantizeLinear to TFLite's fixed output scale and zero point: the
table's own recipe, computed on the fly.

Inputs: "input", (batch, *input_shape) float32, channels last, as the float export's.
Outputs: "output", (batch, n_outputs) float32, as q.predict (the exit's softmax, sigmoid or tanh in
float), and "output_int8", (batch, n_outputs) int8, the last layer's quantised outputs, as
q.predict_int8. The runtime rounds as ONNX defines QuantizeLinear (halves to even) and
requantises as it does (onnxruntime: a float multiplier), not as CMSIS-NN: its int8 outputs
stay within a quantisation step or so of the twin's, not bit-exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistnet._files import write_atomically
from mnistnet._version import __version__
from mnistnet.export import (
    DEFAULT_OPSET,
    OnnxGraph,
    _check_opset,
    _import_onnx,
    check_output_folder,
    make_output_folder,
    window_pads,
)

if TYPE_CHECKING:
    from mnistnet.int8 import QParams, QuantizedLayer, QuantizedModel

__all__ = ["export_quantized_onnx", "quantized_onnx_model"]


class _QdqGraph(OnnxGraph):
    """The float export's graph builder, with int8/int32 constants and Q/DQ pairs."""

    def integer(self, name: str, array: np.ndarray) -> str:
        """A constant of the array's own type (a 0-d array stays a scalar)."""
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array),
                                                                   name=name))
        return name

    def dequantized(self, name: str, values: np.ndarray, scales: np.ndarray,
                    axis: int | None = None) -> str:
        """A constant int8 or int32 array read through DequantizeLinear (per channel along
        axis, zero points 0): the node's output name."""
        zeros = np.zeros(np.shape(scales), dtype=values.dtype)
        inputs = [self.integer(f"{name}_q", values),
                  self.integer(f"{name}_scale", np.asarray(scales, dtype=np.float32)),
                  self.integer(f"{name}_zero_point", zeros)]
        attributes = {} if axis is None else {"axis": axis}
        self.nodes.append(self.onnx.helper.make_node("DequantizeLinear", inputs, [name],
                                                     name=name, **attributes))
        return name

    def fake_quantize(self, q: QParams, name: str, dequantize_q: QParams | None = None,
                      ) -> None:
        """QuantizeLinear then DequantizeLinear of the current tensor, with q's scale and
        zero point (the dequantisation's: dequantize_q's, if given: a Rescaling folded into
        the input's quantisation), kept as `last_q` (their initializers' names)."""
        quantize = self._qparams(q, name)
        self.last_q = quantize if dequantize_q is None else self._qparams(dequantize_q,
                                                                         f"{name}_rescaled")
        self.apply("QuantizeLinear", f"{name}_q", *quantize)
        self.apply("DequantizeLinear", name, *self.last_q)

    def _qparams(self, q: QParams, name: str) -> tuple[str, str]:
        return (self.integer(f"{name}_scale", np.float32(q.scale)),
                self.integer(f"{name}_zero_point", np.int8(q.zero_point)))

    def flat(self, name: str) -> None:
        """The current tensor as (batch, features) in Keras' (h, w, c) order."""
        if self.layout != "flat":
            self.to_layout("NHWC", f"{name}_to_nhwc")
            self.apply("Flatten", f"{name}_flat", axis=1, layout="flat")


def _window_attributes(layer: QuantizedLayer, window: tuple[int, int],
                       image: tuple[int, ...]) -> dict[str, list[int]]:
    (top, bottom), (left, right) = (window_pads(size, k, s, layer.padding) for size, k, s in
                                    zip(image[:2], window, layer.strides, strict=True))
    return {"kernel_shape": list(window), "strides": list(layer.strides),
            "pads": [top, left, bottom, right]}


def _weights(g: _QdqGraph, layer: QuantizedLayer, name: str,
             kernel: np.ndarray, axis: int) -> tuple[str, str]:
    """The kernel (ONNX's layout, channels on `axis`) and the bias, dequantised."""
    bias_scales = (np.float64(layer.input_q.scale) * layer.weight_scales).astype(np.float32)
    return (g.dequantized(f"{name}_kernel", kernel, layer.weight_scales, axis),
            g.dequantized(f"{name}_bias", layer.bias, bias_scales, 0))


def _onnx_dense(g: _QdqGraph, layer: QuantizedLayer, name: str) -> None:
    g.flat(name)
    kernel, bias = _weights(g, layer, name, layer.kernel, 1)  # (in, out): channels on axis 1
    g.apply("Gemm", name, kernel, bias)


def _onnx_conv2d(g: _QdqGraph, layer: QuantizedLayer, name: str) -> None:
    g.to_layout("NCHW", f"{name}_to_nchw")
    kernel, bias = _weights(g, layer, name, layer.kernel.transpose(3, 2, 0, 1), 0)
    g.apply("Conv", name, kernel, bias,
            **_window_attributes(layer, layer.kernel.shape[:2], layer.input_shape))


def _onnx_max_pool(g: _QdqGraph, layer: QuantizedLayer, name: str) -> None:
    g.to_layout("NCHW", f"{name}_to_nchw")
    g.apply("MaxPool", name, **_window_attributes(layer, layer.window, layer.input_shape))


def _onnx_average_pool(g: _QdqGraph, layer: QuantizedLayer, name: str) -> None:
    g.to_layout("NCHW", f"{name}_to_nchw")
    g.apply("AveragePool", name, count_include_pad=0,
            **_window_attributes(layer, layer.window, layer.input_shape))
    if len(layer.output_shape) == 1:  # a global pool: (batch, C, 1, 1) -> (batch, C)
        g.apply("Flatten", f"{name}_flat", axis=1, layout="flat")


def _onnx_relu(g: _QdqGraph, layer: QuantizedLayer, name: str) -> None:
    g.apply("Relu", name)


def _onnx_lookup(g: _QdqGraph, layer: QuantizedLayer, name: str) -> None:
    g.apply(FLOAT_FUNCTIONS[layer.function], name)


ONNX_EMITTERS = {
    "dense": _onnx_dense,
    "conv2d": _onnx_conv2d,
    "max_pool2d": _onnx_max_pool,
    "average_pool2d": _onnx_average_pool,
    "relu": _onnx_relu,
    "lookup": _onnx_lookup,
}
# The ONNX operators of a lookup's function, and of the elementwise exits.
FLOAT_FUNCTIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid"}


def quantized_onnx_model(q: QuantizedModel, opset: int = DEFAULT_OPSET) -> Any:
    """The int8 model as an onnx.ModelProto (checked with onnx.checker); see the module."""
    onnx = _import_onnx()
    opset = _check_opset(onnx, opset)
    helper = onnx.helper
    g = _QdqGraph(onnx, len(q.input_shape))
    first_q = q.layers[0].input_q if q.layers else None
    g.fake_quantize(q.input_q, "input_fq", first_q if q.input_rescaling else None)
    for i, layer in enumerate(q.layers):
        name = f"layer{i}_{layer.kind}"
        if layer.kind not in ONNX_EMITTERS:
            raise ValueError(f"no int8 ONNX emitter for {layer.kind} ({layer.description})")
        ONNX_EMITTERS[layer.kind](g, layer, name)
        if layer.kernel is not None and layer.output_min > -128:  # a fused ReLU, above -128
            g.apply("Relu", f"{name}_relu")
        g.fake_quantize(layer.output_q, f"{name}_fq")
    g.flat("logits")
    g.nodes.append(helper.make_node("QuantizeLinear", [g.tensor, *g.last_q], ["output_int8"],
                                    name="output_int8"))
    if q.exit_activation == "softmax":
        groups = q.n_outputs // q.exit_group  # a softmax over each pixel's channels: > 1
        if groups > 1:
            g.apply("Reshape", "exit_groups",
                    g.integer("exit_groups_shape", np.int64([-1, q.exit_group])))
        g.apply("Softmax", "exit", axis=-1)
        if groups > 1:
            g.apply("Reshape", "exit_rows",
                    g.integer("exit_rows_shape", np.int64([-1, q.n_outputs])))
    elif q.exit_activation in FLOAT_FUNCTIONS:
        g.apply(FLOAT_FUNCTIONS[q.exit_activation], "exit")
    g.apply("Identity", "output")
    float32, int8 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT8
    graph = helper.make_graph(
        g.nodes, "mnistnet_int8",
        [helper.make_tensor_value_info("input", float32, ["batch", *q.input_shape])],
        [helper.make_tensor_value_info("output", float32, ["batch", q.n_outputs]),
         helper.make_tensor_value_info("output_int8", int8, ["batch", q.n_outputs])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="mnistnet",
                              producer_version=__version__,
                              doc_string="\n".join([*q.about, "int8 (QDQ), mnistnet.int8"]))
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_quantized_onnx(q: QuantizedModel, path: str | os.PathLike,
                          opset: int = DEFAULT_OPSET) -> Path:
    """Write the int8 model as an ONNX QDQ file at `path` (atomically) and return the path."""
    target = Path(path)
    check_output_folder(target.parent, f"output file {target}")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder, not a file name")
    data = quantized_onnx_model(q, opset).SerializeToString()
    make_output_folder(target.parent, f"output file {target}")
    write_atomically(target, data)
    return target
