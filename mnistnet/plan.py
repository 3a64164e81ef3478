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

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistnet.codes import (  # noqa: F401  (PLAN_DTYPE and PLAN_FIELDS: re-exported)
    ACTIVATIONS,
    PLAN_DTYPE,
    PLAN_FIELDS,
    conv2d_grad_scratch_floats,
)
from mnistnet.kinds import Kind, kind_of
from mnistnet.layers import Dense, Layer, Shape, _positive_int

CACHE_LINE = 64  # bytes
CACHE_LINE_FLOATS = CACHE_LINE // 4
FLOAT_BYTES = 4
MNIST_IMAGE = (28, 28, 1)
# A dense net this narrow or narrower in its first layer keeps transposed copies of it (see
# _kernels.pyx: trains_transposed); the workspace always has room for them.


class Plan:
    """The layer plan of a model: `table` (one PLAN_DTYPE row per layer) and the block sizes.

    Attributes:
        layers, input_shape: what it was built from.
        kinds: each layer's kind (mnistnet.kinds).
        shapes: the input shape, then each layer's output shape.
        table: the per-layer numbers (PLAN_FIELDS), a structured array the compiled side
            reads as its LayerPlan structs.
        n_params: floats in the parameter (and gradient) block.
        acts_per_row, dacts_per_row: floats per sample in the activation and gradient blocks.
        targets: per-sample offset of the targets region; n_outputs its width.
        dense_only: every layer is Dense (the compiled epoch's dense fast paths apply).
        takes_pixels: the first layer is a Rescaling (a kind applied_at_input): the compiled
            epoch and predict apply it as they read each input row, so that they may read
            uint8 pixels (through its outputs for the 256 pixel values).
        engine: the plan the compiled epoch and predict run: this one, or when takes_pixels,
            the plan of the layers after that Rescaling (a dense net's fast paths then apply
            as they would without it, to the same bits).
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Shape) -> None:
        self.layers = list(layers)
        self.kinds: list[Kind] = [kind_of(layer) for layer in self.layers]
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
        self._check_sizes()
        if not any(layer.weight_shapes(shape)
                   for layer, shape in zip(self.layers, self.shapes, strict=False)):
            raise ValueError("the model has no layer with weights (Dense or Conv2D)")
        self.n_outputs = self.shapes[-1][0]
        self.dense_only = all(kind.layer is Dense for kind in self.kinds)
        self.takes_pixels = self.kinds[0].applied_at_input
        self.table = np.zeros(len(self.layers), dtype=PLAN_DTYPE)
        self._flops: tuple[int, int] | None = None  # flops_per_sample's, counted once
        self._fill_table()
        self.n_inputs = int(self.table[0]["n_in"])
        self.has_l2 = bool(np.any(self.table["l2"] > 0))
        self._check_total()
        self.engine = Plan(self.layers[1:], self.input_shape) if self.takes_pixels else self

    # -- sizes -----------------------------------------------------------------------------
    def _check_sizes(self) -> None:
        """Refuse, before the table (int64) or any buffer is made, a layer whose weights
        and outputs alone would not fit in this machine's memory: sizes as exact integers,
        so that no size overflows on the way (Conv2D(2**62, 3) would)."""
        inputs = math.prod(self.input_shape)
        if 2 * FLOAT_BYTES * inputs > physical_memory():
            raise ValueError(f"input_shape {self.input_shape}: {inputs:,} floats per sample "
                             f"need {_bytes(2 * FLOAT_BYTES * inputs)} of memory, and this "
                             f"machine has {_bytes(physical_memory())}")
        for i in range(len(self.layers)):
            weights, outputs = self._weights_and_outputs(i)
            self._check_layer(i, self._layer_bytes(i), f"{weights:,} weights and {outputs:,} "
                              "outputs per sample")

    def _weights_and_outputs(self, i: int) -> tuple[int, int]:
        """Layer i's weight count and its outputs per sample, as exact integers."""
        weights = sum(math.prod(s) for s in self.layers[i].weight_shapes(self.shapes[i]))
        return weights, math.prod(self.shapes[i + 1])

    def _layer_bytes(self, i: int) -> int:
        """What training layer i needs at the least: its weights and their gradients, its
        outputs for one sample and their gradients."""
        weights, outputs = self._weights_and_outputs(i)
        return FLOAT_BYTES * 2 * (weights + outputs)

    def _check_layer(self, i: int, need: int, what: str) -> None:
        """ValueError naming layer i, its size and the memory it needs, if that is more
        than this machine has."""
        if need > physical_memory():
            raise ValueError(f"layers[{i}] {self.layers[i]!r} is too large: {what} need "
                             f"{_bytes(need)} of memory to train, and this machine has "
                             f"{_bytes(physical_memory())}")

    def _check_total(self) -> None:
        """The whole model's blocks for one sample and one thread, against the machine's
        memory; the error names the largest layer."""
        floats = (2 * self.n_params + self.acts_per_row + self.dacts_per_row
                  + self.workspace_floats(1, 1))
        if FLOAT_BYTES * floats > physical_memory():
            largest = max(range(len(self.layers)), key=self._layer_bytes)
            weights, outputs = self._weights_and_outputs(largest)
            raise ValueError(f"the model is too large: training it needs "
                             f"{_bytes(FLOAT_BYTES * floats)} of memory, and this machine has "
                             f"{_bytes(physical_memory())}; its largest layer is "
                             f"layers[{largest}] {self.layers[largest]!r}, with {weights:,} "
                             f"weights and {outputs:,} outputs per sample")

    # -- construction ----------------------------------------------------------------------
    def _fill_table(self) -> None:
        t = self.table
        param = 0
        act = _size(self.input_shape)   # the input region comes first
        dact = 0
        prev_act, prev_dact = 0, -1
        # The activation applied to the region prev_act last: an in-place layer may overwrite
        # the region only if its backward needs no output of it (None: the input region).
        region_act: str | None = None
        has_weights_before = False
        stats = 0  # floats of the shared statistics area (BatchNormalization)
        for i, (layer, kind) in enumerate(zip(self.layers, self.kinds, strict=True)):
            row = t[i]
            ins, outs = self.shapes[i], self.shapes[i + 1]
            row["kind"] = kind.code
            row["act"] = ACTIVATIONS[layer.activation]
            row["in_h"], row["in_w"], row["in_c"] = _hwc(ins)
            row["out_h"], row["out_w"], row["out_c"] = _hwc(outs)
            row["n_in"], row["n_out"] = _size(ins), _size(outs)
            row["k_h"] = row["k_w"] = row["s_h"] = row["s_w"] = 1
            row["gemm_rows"], row["fan_in"] = 1, _size(ins)
            row["param"], row["scratch"] = -1, -1
            kind.fill(row, layer, ins, outs)
            row["stats"] = -1
            if kind.batch_statistics:  # its mean, variance and 1/std in the shared area
                row["stats"] = stats
                stats += 3 * int(row["out_c"])
            shapes = layer.weight_shapes(ins)
            if shapes:
                row["param"] = param
                row["n_param"] = sum(_size(s) for s in shapes)
                row["n_train"] = sum(_size(s) for s in shapes[: layer.trainable_weights])
                row["l2"] = layer.l2
                param += int(row["n_param"])
            # Activations: Flatten's output is its input's region, and so is an in-place
            # layer's (an Activation after a BatchNormalization, say: its copy is not needed).
            row["act_in"] = prev_act
            in_place = kind.in_place and region_act == "linear"
            if kind.aliases_input or in_place:
                row["act_out"] = prev_act
            else:
                row["act_out"] = act
                act += int(row["n_out"])
            scratch = kind.scratch(row, layer)
            if scratch:
                self._check_layer(i, FLOAT_BYTES * scratch, f"{scratch:,} floats of scratch "
                                  "per sample")
                row["scratch"], row["n_scratch"] = act, scratch
                act += scratch
            # Gradients: only where some layer at or before this one has weights.
            has_weights_here = has_weights_before or bool(shapes)
            row["dact_in"] = prev_dact if has_weights_before else -1
            if kind.aliases_input or in_place or not has_weights_here:
                row["dact_out"] = row["dact_in"]
            else:
                row["dact_out"] = dact
                dact += int(row["n_out"])
            if not kind.aliases_input:
                region_act = layer.activation
            prev_act, prev_dact = int(row["act_out"]), int(row["dact_out"])
            has_weights_before = has_weights_here
        self.n_params = param
        self.targets = act
        self.acts_per_row = act + self.n_outputs
        self.dacts_per_row = dact
        self.shared_floats = -(-stats // CACHE_LINE_FLOATS) * CACHE_LINE_FLOATS
        self.batch_statistics = stats > 0
        self._hand_over_activations()
        self._fill_thread_workspace()

    def _hand_over_activations(self) -> None:
        """An Activation computed in place (its output is its input's region) after a layer
        that applies none of its own and fuses one into the pass that writes its output
        (Kind.fuses_activation: Conv2D, BatchNormalization) hands its activation to that
        layer: the same values in the same region, one pass over them fewer each way. The
        last layer keeps its own (the loss reads its activation: softmax + cross-entropy)."""
        t, linear = self.table, ACTIVATIONS["linear"]
        for i in range(1, len(self.layers) - 1):
            row, before = t[i], t[i - 1]
            if (self.kinds[i].in_place and row["act_out"] == row["act_in"]
                    and self.kinds[i - 1].fuses_activation and before["act"] == linear):
                before["act"], row["act"] = row["act"], linear

    def _fill_thread_workspace(self) -> None:
        """Per thread (nets that are not dense-only): one sample's patch gradient (the
        largest over the conv layers), then the transposed kernel of every dense or conv
        layer whose input gradient is computed (made once a step, so that the input gradient
        is a row-major GEMM along the kernel's rows)."""
        t = self.table
        t["wt"] = -1
        # A convolution's input-gradient scratch: a GEMM kind over images.
        self.patch_grad_floats = max([conv2d_grad_scratch_floats(
            (int(r["out_h"]), int(r["out_w"])), (int(r["k_h"]), int(r["k_w"])),
            (int(r["s_h"]), int(r["s_w"])), int(r["in_c"]), int(r["out_c"]))
            for r, kind in zip(t, self.kinds, strict=True)
            if kind.gemm and kind.takes_images and r["dact_in"] >= 0], default=0)
        ws = self.patch_grad_floats
        if not self.dense_only:
            for row, kind in zip(t, self.kinds, strict=True):
                if kind.gemm and row["dact_in"] >= 0:
                    row["wt"] = ws
                    ws += int(row["fan_in"] * row["out_c"])
        # A multiple of a cache line, so threads never share one.
        self._thread_ws = -(-ws // CACHE_LINE_FLOATS) * CACHE_LINE_FLOATS

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

    def weights_of(self, flat: np.ndarray, i: int) -> list[np.ndarray]:
        """Layer i's weights (Keras' shapes and order) as views into `flat`."""
        off = int(self.table[i]["param"])
        views = []
        for s in self.layers[i].weight_shapes(self.shapes[i]):
            views.append(flat[off: off + _size(s)].reshape(s))
            off += _size(s)
        return views

    def kernel_and_bias(self, flat: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(kernel in Keras' shape, bias) of layer i (Dense or Conv2D), views into `flat`."""
        kernel, bias = self.weights_of(flat, i)
        return kernel, bias

    def layer_weights(self, flat: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(kernel as a (fan_in, out) matrix, bias) of layer i, views into `flat`."""
        row = self.table[i]
        off, k, oc = int(row["param"]), int(row["fan_in"]), int(row["out_c"])
        return flat[off: off + k * oc].reshape(k, oc), flat[off + k * oc: off + k * oc + oc]

    def trainable(self) -> np.ndarray:
        """A bool mask over the parameter block: the weights the optimizer trains (not
        BatchNormalization's moving statistics)."""
        mask = np.zeros(self.n_params, dtype=bool)
        for row in self.table:
            if row["param"] >= 0:
                mask[row["param"]: row["param"] + row["n_train"]] = True
        return mask

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
        if self._flops is None:  # once: every predict call asks (fast._net)
            self._flops = self._count_flops()
        return self._flops

    def _count_flops(self) -> tuple[int, int]:
        forward = backward = 0
        for row, kind in zip(self.table, self.kinds, strict=True):
            if kind.gemm:
                gemm = 2 * int(row["gemm_rows"] * row["fan_in"] * row["out_c"])
                forward += gemm
                backward += gemm + (gemm if row["dact_in"] >= 0 else 0)
        return forward, forward + backward


def input_shape_of(layers: Sequence[Layer], input_dim: Any = None,
                   input_shape: Any = None) -> Shape:
    """The per-sample input shape from input_dim or input_shape (not both); neither: MNIST's,
    as images (28, 28, 1) when the first layer takes images (after a leading Rescaling),
    else rows of 784."""
    if input_dim is not None and input_shape is not None:
        raise ValueError("give input_dim (rows of features) or input_shape, not both")
    if input_dim is not None:
        return (_positive_int(input_dim, "input_dim"),)
    if input_shape is None:
        return MNIST_IMAGE if takes_images(layers) else (784,)
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (1, 3):
        raise ValueError(f"input_shape must be (features,) or (height, width, channels), got "
                         f"{input_shape!r}")
    return tuple(_positive_int(v, "input_shape") for v in input_shape)


def takes_images(layers: Sequence[Layer]) -> bool:
    """Whether a model of these layers takes images (h, w, c): its first layer does, or the
    one after a leading Rescaling (which takes whatever shape comes)."""
    first = 1 if len(layers) > 1 and kind_of(layers[0]).applied_at_input else 0
    return kind_of(layers[first]).takes_images


def _size(shape: Shape) -> int:
    return math.prod(int(v) for v in shape)


def physical_memory() -> int:
    """Bytes of memory this machine has: no model may need more (Plan checks its sizes
    against it, mnistnet.saving a model file's). Where the system does not tell, 2**47 (the
    user address space of x86-64 Linux)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 47


def _bytes(n: int) -> str:
    """A byte count for people: "24.6 TiB" (exact integers of any size)."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    power = min((n.bit_length() - 1) // 10, len(units) - 1) if n > 0 else 0
    if power == 0:
        return f"{n} bytes"
    if n < 1 << 1000:  # a float holds it
        return f"{n / 1024 ** power:.1f} {units[power]}"
    return f"{n // 1024 ** power:,} {units[power]}"


def _hwc(shape: Shape) -> tuple[int, int, int]:
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    return 1, 1, _size(shape)


def aligned_zeros(n: int) -> np.ndarray:
    """n float32 zeros starting on a cache-line boundary. The training team splits weight and
    activation blocks at multiples of 16 floats; aligned, no cache line is then written by
    two threads (false sharing made the split first layer 3x slower)."""
    pad = CACHE_LINE_FLOATS
    raw = np.zeros(n + pad, dtype=np.float32)
    start = (-raw.ctypes.data % CACHE_LINE) // 4
    return raw[start:start + n]
