"""The layer plan: every layer's kind, shapes and offsets into the model's blocks, computed
once from the layer list and read by both backends.

Blocks (all float32, one each per model or per call):

* parameters, and gradients with the same layout: per layer with weights, its kernel (Keras'
  shape, row-major) then its bias;
* optimizer state: `slots` blocks with the parameters' layout one after another (none for
  SGD, one for momentum, two for Adam), so an element's state sits at the same offset in each;
* activations, for `rows` samples at a time: region by region, each region `rows` x its
  per-sample size, so that a region's rows form one C-contiguous (rows, size) matrix. The
  regions are the input, each layer's output (Flatten's output is its input's region), the
  targets, and each layer's forward scratch (Conv2D's patches, MaxPool2D's argmax as int32,
  Dropout's mask);
* activation gradients, likewise region by region (d loss / d each layer's output, where some
  earlier layer has weights: nothing is back-propagated past the first layer with weights),
  then a workspace for the compiled kernels (the reference ignores it).

Offsets of per-sample regions are in floats per sample: region r of a block for `rows`
samples starts at rows * offset. The plan is independent of the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistnet import reference
from mnistnet.layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    RandomTranslation,
    Shape,
)

KINDS = reference.KINDS
# One row of the plan table per layer: the C struct LayerPlan in _kernels.pxd has these
# fields, in this order, each 8 bytes (Py_ssize_t, and a double for the rate).
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
)
FLOAT_FIELDS = ("rate", "l2", "fill", "momentum", "epsilon")
PLAN_DTYPE = np.dtype([(name, np.float64 if name in FLOAT_FIELDS else np.int64)
                       for name in PLAN_FIELDS])
CACHE_LINE_FLOATS = 16
# A dense net this narrow or narrower in its first layer keeps transposed copies of it (see
# _kernels.pyx: trains_transposed); the workspace always has room for them.


class Plan:
    """The layer plan of a model: `table` (one PLAN_DTYPE row per layer) and the block sizes.

    Attributes:
        layers, input_shape: what it was built from.
        shapes: the input shape, then each layer's output shape.
        table: the per-layer numbers (PLAN_FIELDS), a structured array the compiled side
            reads as its LayerPlan structs.
        n_params: floats in the parameter (and gradient) block.
        acts_per_row, dacts_per_row: floats per sample in the activation and gradient blocks.
        targets: per-sample offset of the targets region; n_outputs its width.
        dense_only: every layer is Dense (the compiled epoch's dense fast paths apply).
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Shape) -> None:
        self.layers = list(layers)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.shapes: list[Shape] = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                self.shapes.append(tuple(int(v) for v in layer.output_shape(self.shapes[-1])))
            except ValueError as exc:
                raise ValueError(f"layers[{i}]: {exc}") from None
        if len(self.shapes[-1]) != 1:
            raise ValueError(f"the last layer's output has shape {self.shapes[-1]}; the model "
                             "needs rows of class scores: end with Flatten() and Dense(10)")
        if not any(layer.weight_shapes(shape)
                   for layer, shape in zip(self.layers, self.shapes, strict=False)):
            raise ValueError("the model has no layer with weights (Dense or Conv2D)")
        self.n_outputs = self.shapes[-1][0]
        self.table = np.zeros(len(self.layers), dtype=PLAN_DTYPE)
        self._fill_table()
        self.dense_only = all(isinstance(layer, Dense) for layer in self.layers)
        self.n_inputs = int(self.table[0]["n_in"])
        self.has_l2 = bool(np.any(self.table["l2"] > 0))

    # -- construction ----------------------------------------------------------------------
    def _fill_table(self) -> None:
        t = self.table
        param = 0
        act = _size(self.input_shape)   # the input region comes first
        dact = 0
        prev_act, prev_dact = 0, -1
        has_weights_before = False
        stats = 0  # floats of the shared statistics area (BatchNormalization)
        for i, layer in enumerate(self.layers):
            row = t[i]
            ins, outs = self.shapes[i], self.shapes[i + 1]
            row["kind"] = KINDS[layer.kind]
            row["act"] = reference.ACTIVATIONS[layer.activation]
            row["in_h"], row["in_w"], row["in_c"] = _hwc(ins)
            row["out_h"], row["out_w"], row["out_c"] = _hwc(outs)
            row["n_in"], row["n_out"] = _size(ins), _size(outs)
            row["k_h"] = row["k_w"] = row["s_h"] = row["s_w"] = 1
            row["gemm_rows"], row["fan_in"] = 1, _size(ins)
            row["param"], row["scratch"] = -1, -1
            if isinstance(layer, Conv2D):
                _, _, pt, pl = layer.geometry(ins)
                row["k_h"], row["k_w"] = layer.kernel_size
                row["s_h"], row["s_w"] = layer.strides
                row["pad_top"], row["pad_left"] = pt, pl
                row["gemm_rows"] = outs[0] * outs[1]
                row["fan_in"] = layer.kernel_size[0] * layer.kernel_size[1] * ins[2]
            elif isinstance(layer, MaxPool2D):
                _, _, pt, pl = layer.geometry(ins)
                row["k_h"], row["k_w"] = layer.pool_size
                row["s_h"], row["s_w"] = layer.strides
                row["pad_top"], row["pad_left"] = pt, pl
            elif isinstance(layer, Dropout):
                row["rate"] = layer.rate
            elif isinstance(layer, RandomTranslation):
                (row["shift_h0"], row["shift_h1"], row["shift_w0"],
                 row["shift_w1"]) = layer.shift_range(ins)
                row["fill"] = layer.fill_value
            row["stats"] = -1
            if isinstance(layer, BatchNormalization):
                row["momentum"], row["epsilon"] = layer.momentum, layer.epsilon
                row["stats"] = stats
                stats += 3 * int(row["out_c"])
            shapes = layer.weight_shapes(ins)
            if shapes:
                row["param"] = param
                row["n_param"] = sum(_size(s) for s in shapes)
                row["n_train"] = sum(_size(s) for s in shapes[: layer.trainable_weights])
                row["l2"] = layer.l2
                param += int(row["n_param"])
            # Activations: Flatten's output is its input's region.
            row["act_in"] = prev_act
            if isinstance(layer, Flatten):
                row["act_out"] = prev_act
            else:
                row["act_out"] = act
                act += int(row["n_out"])
            scratch = self._scratch_floats(layer, row)
            if scratch:
                row["scratch"], row["n_scratch"] = act, scratch
                act += scratch
            # Gradients: only where some layer at or before this one has weights.
            has_weights_here = has_weights_before or bool(shapes)
            row["dact_in"] = prev_dact if has_weights_before else -1
            if isinstance(layer, Flatten) or not has_weights_here:
                row["dact_out"] = row["dact_in"]
            else:
                row["dact_out"] = dact
                dact += int(row["n_out"])
            prev_act, prev_dact = int(row["act_out"]), int(row["dact_out"])
            has_weights_before = has_weights_here
        self.n_params = param
        self.targets = act
        self.acts_per_row = act + self.n_outputs
        self.dacts_per_row = dact
        self.shared_floats = -(-stats // CACHE_LINE_FLOATS) * CACHE_LINE_FLOATS
        self.batch_statistics = stats > 0
        self._fill_thread_workspace()

    def _fill_thread_workspace(self) -> None:
        """Per thread (nets that are not dense-only): one sample's patch gradient (the
        largest over the conv layers), then the transposed kernel of every dense or conv
        layer whose input gradient is computed (made once a step, so that the input gradient
        is a row-major GEMM along the kernel's rows)."""
        t = self.table
        t["wt"] = -1
        self.patch_grad_floats = max([int(r["gemm_rows"] * r["fan_in"]) for r in t
                                      if r["kind"] == KINDS["conv2d"] and r["dact_in"] >= 0],
                                     default=0)
        ws = self.patch_grad_floats
        if not all(isinstance(layer, Dense) for layer in self.layers):
            for row in t:
                if row["kind"] in (KINDS["dense"], KINDS["conv2d"]) and row["dact_in"] >= 0:
                    row["wt"] = ws
                    ws += int(row["fan_in"] * row["out_c"])
        # A multiple of a cache line, so threads never share one.
        self._thread_ws = -(-ws // CACHE_LINE_FLOATS) * CACHE_LINE_FLOATS

    @staticmethod
    def _scratch_floats(layer: Layer, row: np.void) -> int:
        if isinstance(layer, Conv2D):
            if conv_reads_input_as_patches(row):
                return 0
            return int(row["gemm_rows"] * row["fan_in"])
        if isinstance(layer, (MaxPool2D, Dropout, BatchNormalization)):
            return int(row["n_out"])  # argmax (int32), mask, or the normalised input
        return 0

    # -- the dense nets' view of it --------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        """Layer widths, input first, for a dense-only plan: [784, 128, 64, 10]."""
        return [self.n_inputs] + [int(r["n_out"]) for r in self.table]

    # -- block sizes -----------------------------------------------------------------------
    def buffer_sizes(self, rows: int, threads: int = 1) -> tuple[int, int, int]:
        """(n_params, n_acts, n_dacts): floats in the parameter (and gradient) block, and in
        the activation and activation-gradient blocks for `rows` samples, the latter with the
        compiled training kernels' workspace for `threads` threads (see workspace_floats)."""
        return (self.n_params, rows * self.acts_per_row,
                rows * self.dacts_per_row + self.workspace_floats(rows, threads))

    def workspace_floats(self, rows: int, threads: int = 1) -> int:
        """The compiled training kernels' workspace after the gradient regions.

        Dense-only nets: room for the first layer's weights and their gradient (a narrow
        first layer trains on transposed copies there, a team splitting the first layer keeps
        each thread's columns there), then for each thread after the first, room for all
        the input rows of a batch and a copy of the parameter and gradient blocks.
        Other nets: the shared statistics area (the batch's BatchNormalization statistics),
        then per thread its own area (thread_workspace_floats)."""
        if self.dense_only:
            w = self.widths
            ws = 2 * w[0] * w[1]
            if threads > 1:
                ws += (threads - 1) * (rows * w[0] + 2 * self.n_params)
            return ws
        return self.shared_floats + max(threads, 1) * self.thread_workspace_floats()

    def thread_workspace_floats(self) -> int:
        """Floats of one thread's workspace in a net that is not dense-only (see
        _fill_thread_workspace)."""
        return self._thread_ws

    def team_threads(self, rows: int, n_dacts: int) -> int:
        """Threads an activation-gradient block of n_dacts floats has workspace for (at
        least 1): the inverse of buffer_sizes."""
        _, _, one = self.buffer_sizes(rows, 1)
        if self.dense_only:
            w = self.widths
            return 1 + max(0, n_dacts - one) // (rows * w[0] + 2 * self.n_params)
        per = self.thread_workspace_floats()
        room = n_dacts - rows * self.dacts_per_row - self.shared_floats
        return max(1, room // per) if per else 64

    # -- views -----------------------------------------------------------------------------
    def weight_views(self, flat: np.ndarray) -> list[np.ndarray]:
        """[kernel0, bias0, kernel1, bias1, ...] (Keras' shapes and order) as views into the
        flat parameter (or gradient, or optimizer-state) block."""
        views = []
        for layer, shape, row in zip(self.layers, self.shapes, self.table, strict=False):
            off = int(row["param"])
            for s in layer.weight_shapes(shape):
                views.append(flat[off: off + _size(s)].reshape(s))
                off += _size(s)
        return views

    def layer_weights(self, flat: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(kernel as a (fan_in, out) matrix, bias) of layer i, views into `flat`."""
        row = self.table[i]
        off, k, oc = int(row["param"]), int(row["fan_in"]), int(row["out_c"])
        return flat[off: off + k * oc].reshape(k, oc), flat[off + k * oc: off + k * oc + oc]

    def describe(self) -> list[dict[str, Any]]:
        """Per layer: its class, config, input and output shapes and weight count."""
        return [{"class": type(layer).__name__, "config": layer.get_config(),
                 "input_shape": list(self.shapes[i]), "output_shape": list(self.shapes[i + 1]),
                 "params": int(self.table[i]["n_param"])}
                for i, layer in enumerate(self.layers)]

    def flops_per_sample(self) -> tuple[int, int]:
        """(forward, forward + backward) multiply-add FLOPs (2 per multiply-add) of the
        dense and conv GEMMs per sample; the backward skips the first weight layer's input
        gradient, as the engine does. Elementwise work is not counted."""
        forward = backward = 0
        for row in self.table:
            if row["kind"] in (KINDS["dense"], KINDS["conv2d"]):
                gemm = 2 * int(row["gemm_rows"] * row["fan_in"] * row["out_c"])
                forward += gemm
                backward += gemm + (gemm if row["dact_in"] >= 0 else 0)
        return forward, forward + backward


def conv_reads_input_as_patches(row: np.void) -> bool:
    """A 1x1, stride-1 convolution without padding: its patches are its input rows."""
    return (row["k_h"] == 1 and row["k_w"] == 1 and row["s_h"] == 1 and row["s_w"] == 1
            and row["pad_top"] == 0 and row["pad_left"] == 0)


def _size(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _hwc(shape: Shape) -> tuple[int, int, int]:
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    return 1, 1, _size(shape)
