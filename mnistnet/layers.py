"""Layer configurations: Dense, Conv2D, MaxPool2D, AveragePooling2D, GlobalAveragePooling2D,
Flatten, Dropout, Activation, RandomTranslation, BatchNormalization, Rescaling (Keras 3's
names, arguments and shapes).

A layer here is a description, not a holder of weights: the Model keeps every parameter in
one flat block, laid out by the layer plan (mnistnet.plan), and the kernels of either backend
run over it. Each layer knows its output shape for an input shape (channels last, NHWC, as
Keras), the shapes of its weights in Keras' order and layout, and how Keras initialises them.
Shapes exclude the batch axis: (28, 28, 1) for an image, (784,) for a row of features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistnet.codes import ACTIVATIONS as ACTIVATION_CODES
from mnistnet.codes import window_geometry
from mnistnet.regularizers import L2, regularizer_from_config, regularizer_to_config

ACTIVATIONS = tuple(ACTIVATION_CODES)
PADDINGS = ("valid", "same")

__all__ = [
    "Activation",
    "AveragePooling2D",
    "AvgPool2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalAvgPool2D",
    "MaxPool2D",
    "MaxPooling2D",
    "RandomTranslation",
    "Rescaling",
]

Shape = tuple[int, ...]


def _choice(value: Any, valid: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints (each >= 1) as a pair, as Keras takes kernel_size/strides."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return _positive_int(value[0], name), _positive_int(value[1], name)
    n = _positive_int(value, name)
    return n, n


class Layer:
    """What every layer kind has: its config, its output shape, its weights' shapes."""

    activation = "linear"
    trainable_weights = 2  # how many of weight_shapes the optimizer updates
    l2 = 0.0  # the kernel's L2 regularisation factor

    def output_shape(self, input_shape: Shape) -> Shape:
        raise NotImplementedError

    def weight_shapes(self, input_shape: Shape) -> list[Shape]:
        """Shapes of this layer's weights, in Keras' order (kernel, then bias)."""
        return []

    def initial_weights(self, rng: np.random.Generator, input_shape: Shape) -> list[np.ndarray]:
        """Keras' defaults: Glorot-uniform kernel, zero bias."""
        return []

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _repr_args(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.get_config())))


def glorot_uniform(rng: np.random.Generator, shape: Shape, fan_in: int,
                   fan_out: int) -> np.ndarray:
    """Keras' default kernel initialiser: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


class Dense(Layer):
    """A fully connected layer: output = activation(input @ kernel + bias).

    Args:
        units: number of outputs.
        activation: "linear", "sigmoid", "relu", "tanh" or "softmax".
        kernel_regularizer: None, or mn.regularizers.L2(l2).

    Its input must be a row of features, (n,): after a Conv2D or MaxPool2D put a Flatten()
    first. The kernel has shape (inputs, units), as in Keras.
    """


    def __init__(self, units: int, activation: str = "linear",
                 kernel_regularizer: L2 | None = None) -> None:
        self.units = _positive_int(units, "units")
        self.activation = _choice(activation, ACTIVATIONS, "activation")
        self.kernel_regularizer = regularizer_from_config(kernel_regularizer)

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ValueError(f"{self!r} gets an input of shape {input_shape}; Dense takes "
                             "rows of features: add Flatten() before it")
        return (self.units,)

    def weight_shapes(self, input_shape: Shape) -> list[Shape]:
        return [(int(input_shape[0]), self.units), (self.units,)]

    def initial_weights(self, rng: np.random.Generator, input_shape: Shape) -> list[np.ndarray]:
        kernel, bias = self.weight_shapes(input_shape)
        return [glorot_uniform(rng, kernel, kernel[0], kernel[1]),
                np.zeros(bias, dtype=np.float32)]

    @property
    def l2(self) -> float:
        return self.kernel_regularizer.l2 if self.kernel_regularizer else 0.0

    def get_config(self) -> dict[str, Any]:
        config = {"units": self.units, "activation": self.activation}
        if self.kernel_regularizer is not None:
            config["kernel_regularizer"] = regularizer_to_config(self.kernel_regularizer)
        return config

    def __repr__(self) -> str:
        extra = (f", kernel_regularizer={self.kernel_regularizer!r}"
                 if self.kernel_regularizer else "")
        return f"Dense({self.units}, activation={self.activation!r}{extra})"


class Conv2D(Layer):
    """A 2-D convolution over channels-last images (Keras' Conv2D, cross-correlation as there).

    Args:
        filters: number of output channels (>= 1).
        kernel_size: an int or a pair (height, width).
        strides: an int or a pair (default 1).
        padding: "valid" (no padding; the kernel must fit in the input) or "same" (zeros
            around, ceil(size / stride) outputs per axis, as Keras pads).
        activation: "linear", "sigmoid", "relu", "tanh" or "softmax" (over the channels).
        kernel_regularizer: None, or mn.regularizers.L2(l2).

    The kernel has Keras' shape (kernel height, kernel width, input channels, filters), then
    the bias (filters,).
    """


    def __init__(self, filters: int, kernel_size: int | Sequence[int],
                 strides: int | Sequence[int] = 1, padding: str = "valid",
                 activation: str = "linear", kernel_regularizer: L2 | None = None) -> None:
        self.filters = _positive_int(filters, "filters")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _choice(padding, PADDINGS, "padding")
        self.activation = _choice(activation, ACTIVATIONS, "activation")
        self.kernel_regularizer = regularizer_from_config(kernel_regularizer)

    @property
    def l2(self) -> float:
        return self.kernel_regularizer.l2 if self.kernel_regularizer else 0.0

    def geometry(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(out height, out width, padding top, padding left) for an (h, w, c) input."""
        _check_image(self, input_shape)
        try:
            oh, pt = window_geometry(input_shape[0], self.kernel_size[0], self.strides[0],
                                     self.padding)
            ow, pl = window_geometry(input_shape[1], self.kernel_size[1], self.strides[1],
                                     self.padding)
        except ValueError as exc:
            raise ValueError(f"{self!r} on an input of shape {input_shape}: the kernel "
                             f"{self.kernel_size} does not fit ({exc})") from None
        return oh, ow, pt, pl

    def output_shape(self, input_shape: Shape) -> Shape:
        oh, ow, _, _ = self.geometry(input_shape)
        return (oh, ow, self.filters)

    def weight_shapes(self, input_shape: Shape) -> list[Shape]:
        kh, kw = self.kernel_size
        return [(kh, kw, int(input_shape[2]), self.filters), (self.filters,)]

    def initial_weights(self, rng: np.random.Generator, input_shape: Shape) -> list[np.ndarray]:
        kernel, bias = self.weight_shapes(input_shape)
        field = kernel[0] * kernel[1]  # Keras: fans are channels times the receptive field
        return [glorot_uniform(rng, kernel, field * kernel[2], field * kernel[3]),
                np.zeros(bias, dtype=np.float32)]

    def get_config(self) -> dict[str, Any]:
        config = {"filters": self.filters, "kernel_size": list(self.kernel_size),
                  "strides": list(self.strides), "padding": self.padding,
                  "activation": self.activation}
        if self.kernel_regularizer is not None:
            config["kernel_regularizer"] = regularizer_to_config(self.kernel_regularizer)
        return config


class _Pooling2D(Layer):
    """What MaxPool2D and AveragePooling2D share: a window sliding over channels-last
    images."""

    def __init__(self, pool_size: int | Sequence[int] = 2,
                 strides: int | Sequence[int] | None = None, padding: str = "valid") -> None:
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")
        self.padding = _choice(padding, PADDINGS, "padding")

    def geometry(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(out height, out width, padding top, padding left) for an (h, w, c) input."""
        _check_image(self, input_shape)
        try:
            oh, pt = window_geometry(input_shape[0], self.pool_size[0], self.strides[0],
                                     self.padding)
            ow, pl = window_geometry(input_shape[1], self.pool_size[1], self.strides[1],
                                     self.padding)
        except ValueError as exc:
            raise ValueError(f"{self!r} on an input of shape {input_shape}: the pool window "
                             f"{self.pool_size} does not fit ({exc})") from None
        return oh, ow, pt, pl

    def output_shape(self, input_shape: Shape) -> Shape:
        oh, ow, _, _ = self.geometry(input_shape)
        return (oh, ow, int(input_shape[2]))

    def get_config(self) -> dict[str, Any]:
        return {"pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPool2D(_Pooling2D):
    """Max pooling over windows of channels-last images (Keras' MaxPooling2D).

    Args:
        pool_size: an int or a pair (default 2).
        strides: an int, a pair, or None for pool_size (Keras' default).
        padding: "valid" (windows inside the input; a remainder is dropped) or "same"
            (ceil(size / stride) outputs; the padding never wins the max).
    """


class AveragePooling2D(_Pooling2D):
    """Average pooling over windows of channels-last images (Keras' AveragePooling2D): each
    output is the mean of its window's cells inside the image.

    Args:
        pool_size: an int or a pair (default 2).
        strides: an int, a pair, or None for pool_size (Keras' default).
        padding: "valid" (windows inside the input; a remainder is dropped) or "same"
            (ceil(size / stride) outputs; the padding is left out of the mean, as Keras and
            TensorFlow count it).
    """


class GlobalAveragePooling2D(Layer):
    """The mean of each channel over the whole image (Keras' GlobalAveragePooling2D):
    (h, w, c) -> (c,)."""

    def output_shape(self, input_shape: Shape) -> Shape:
        _check_image(self, input_shape)
        return (int(input_shape[2]),)

    def get_config(self) -> dict[str, Any]:
        return {}


MaxPooling2D = MaxPool2D  # Keras' other names
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D


class Flatten(Layer):
    """(h, w, c) -> (h * w * c,), in channels-last order (Keras' Flatten). Costs nothing: its
    output is the same memory as its input."""


    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)

    def get_config(self) -> dict[str, Any]:
        return {}


class Dropout(Layer):
    """Inverted dropout (Keras' Dropout): in fit, each input is zeroed with probability
    `rate` and the others are scaled by 1 / (1 - rate); in predict and evaluate it passes its
    input through. The masks come from a counter-based generator keyed by the model's seed,
    the epoch, the step and the element, so they are the same in both backends and however
    the batch is split across threads.

    Args:
        rate: the fraction to drop, in [0, 1).
    """


    def __init__(self, rate: float) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)):
            raise TypeError(f"Dropout rate must be a number, got {type(rate).__name__}")
        if not 0 <= rate < 1:  # also refuses NaN
            raise ValueError(f"Dropout rate must lie in [0, 1), got {rate}")
        self.rate = float(rate)

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"


class Activation(Layer):
    """An activation on its own (Keras' Activation layer): "linear", "sigmoid", "relu",
    "tanh" or "softmax" (over the last axis), e.g. after a BatchNormalization."""


    def __init__(self, activation: str) -> None:
        self.activation = _choice(activation, ACTIVATIONS, "activation")

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {"activation": self.activation}

    def __repr__(self) -> str:
        return f"Activation({self.activation!r})"


def _factor(value: Any, name: str) -> tuple[float, float]:
    """A factor f (shifts in [-f, f]) or a pair (lower, upper) of fractions of the size."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (-value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float, np.floating))
                             for v in pair):
        raise TypeError(f"{name} must be a number or a pair of numbers, got {value!r}")
    lower, upper = float(pair[0]), float(pair[1])
    if not (-1 <= lower <= upper <= 1):
        raise ValueError(f"{name} must give -1 <= lower <= upper <= 1, got {value!r}")
    return lower, upper


class RandomTranslation(Layer):
    """Random shifts of each training image (Keras' RandomTranslation), off in predict and
    evaluate.

    Each image moves down by dy and right by dx whole pixels (negative: up, left), drawn
    uniformly from the integers between round(lower * height) and round(upper * height)
    (width likewise), where height_factor f means (lower, upper) = (-f, f); the pixels
    uncovered are fill_value. Whole-pixel shifts with a constant fill, for speed: Keras'
    defaults are a bilinear shift by fractions of a pixel with a reflected fill
    (fill_mode="reflect"); only fill_mode="constant" and interpolation="nearest" are
    offered here. The shifts come from a counter-based generator keyed by the model's seed,
    the epoch, the step and the image, as Dropout's masks.

    Args:
        height_factor, width_factor: a fraction f in [0, 1], or a pair (lower, upper).
        fill_mode: "constant" only.
        interpolation: "nearest" only.
        fill_value: the value of uncovered pixels (default 0).
    """


    def __init__(self, height_factor: float | Sequence[float], width_factor: float |
                 Sequence[float], fill_mode: str = "constant", interpolation: str = "nearest",
                 fill_value: float = 0.0) -> None:
        self.height_factor = _factor(height_factor, "height_factor")
        self.width_factor = _factor(width_factor, "width_factor")
        if fill_mode != "constant" or interpolation != "nearest":
            raise ValueError("RandomTranslation shifts by whole pixels with a constant fill: "
                             "fill_mode='constant', interpolation='nearest' (got "
                             f"fill_mode={fill_mode!r}, interpolation={interpolation!r})")
        if isinstance(fill_value, bool) or not isinstance(fill_value,
                                                          (int, float, np.floating)):
            raise TypeError(f"fill_value must be a number, got {type(fill_value).__name__}")
        if not np.isfinite(fill_value):
            raise ValueError(f"fill_value must be finite, got {fill_value}")
        self.fill_value = float(fill_value)

    def shift_range(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(lowest dy, highest dy, lowest dx, highest dx) in pixels for an (h, w, c) input."""
        _check_image(self, input_shape)
        h, w = input_shape[0], input_shape[1]
        return (round(self.height_factor[0] * h), round(self.height_factor[1] * h),
                round(self.width_factor[0] * w), round(self.width_factor[1] * w))

    def output_shape(self, input_shape: Shape) -> Shape:
        self.shift_range(input_shape)
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {"height_factor": list(self.height_factor),
                "width_factor": list(self.width_factor), "fill_mode": "constant",
                "interpolation": "nearest", "fill_value": self.fill_value}


class BatchNormalization(Layer):
    """Batch normalisation over the last axis (Keras' BatchNormalization): in fit, each
    channel is normalised by the batch's mean and (biased) variance, over every sample and
    pixel, then scaled by gamma and shifted by beta; the moving averages are updated as
    moving = moving * momentum + batch * (1 - momentum). In predict and evaluate the moving
    averages normalise, so a sample's output never depends on the batch it comes in.

    Args:
        momentum: of the moving averages, in [0, 1) (Keras' 0.99).
        epsilon: > 0, added to the variance (Keras' 1e-3).

    Weights, in Keras' order: gamma (ones), beta (zeros), moving_mean (zeros),
    moving_variance (ones), each (channels,); the optimizer trains gamma and beta.
    """


    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
            raise TypeError(f"momentum must be a number, got {type(momentum).__name__}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
            raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
        if not (np.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def weight_shapes(self, input_shape: Shape) -> list[Shape]:
        c = (int(input_shape[-1]),)
        return [c, c, c, c]

    def initial_weights(self, rng: np.random.Generator, input_shape: Shape) -> list[np.ndarray]:
        c = int(input_shape[-1])
        one, zero = np.ones(c, np.float32), np.zeros(c, np.float32)
        return [one, zero, zero.copy(), one.copy()]

    def get_config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "epsilon": self.epsilon}


class Rescaling(Layer):
    """Its input times `scale` plus `offset` (Keras' Rescaling), e.g. Rescaling(1/255) to
    take pixels in 0..255 to [0, 1], or Rescaling(1/127.5, offset=-1) to [-1, 1].

    As a model's first layer it lets fit, predict and evaluate take uint8 images as they
    are: each batch's rows are turned into floats as they are gathered, so the model never
    holds a float32 copy of the data (a quarter of the memory). It computes in double
    precision and rounds once to float32, so that uint8 pixels through Rescaling(1/255) are
    exactly float32(x) / 255, the bits of `x.astype(np.float32) / 255` (and of
    mn.load_mnist's images): a model trained on uint8 images through it ends with the same
    weights, bit for bit, as one without it trained on those floats. (Keras multiplies in
    float32 by float32(1/255), which differs from x / 255 in the last bit for 126 of the 256
    pixel values.)

    Args:
        scale: a finite number, the same for every input (Keras also takes one per channel;
            not offered here).
        offset: a finite number added after the scaling (default 0).
    """

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        self.scale = _finite_number(scale, "scale")
        self.offset = _finite_number(offset, "offset")

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check_image(layer: Layer, input_shape: Shape) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{layer!r} takes images (height, width, channels), got an input of "
                         f"shape {input_shape}; give the model input_shape=(28, 28, 1)")
