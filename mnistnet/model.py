"""Model and History: a thin layer that owns the buffers and calls the kernels.

A Model keeps every parameter in one contiguous float32 block laid out by its layer plan
(mnistnet.plan: per layer with weights, its kernel in Keras' shape, then its bias), the
gradients in a second block of the same layout, the optimizer's state in blocks of that layout
too, and the activations of one batch in another; `get_weights()` returns copies of views into
the first. The backend ("fast": compiled, or "reference": NumPy) only decides which module's
kernels run over those buffers; initialisation, shuffling, dropout keys and validation are
shared, so both backends see identical batches from identical weights.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnistnet import fast, reference
from mnistnet.callbacks import Callback, CallbackList
from mnistnet.layers import (
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    RandomTranslation,
    Shape,
    _choice,
    _positive_int,
    layer_from_config,
    layer_to_config,
)
from mnistnet.optimizers import SGD, Adam, Optimizer, optimizer_from_config, optimizer_to_config
from mnistnet.plan import Plan
from mnistnet.schedules import OneCycle

__all__ = ["SGD", "Activation", "Adam", "BatchNormalization", "Conv2D", "Dense", "Dropout",
           "Flatten", "History", "MaxPool2D", "Model", "RandomTranslation", "preset"]

BACKENDS = {"fast": fast, "reference": reference}
ACTIVATIONS = tuple(reference.ACTIVATIONS)
LOSSES = tuple(reference.LOSSES)
PREDICT_CHUNK = 256  # rows per forward pass in predict/evaluate: keeps activations in cache
CACHE_LINE = 64  # bytes
MNIST_IMAGE = (28, 28, 1)


class History:
    """What fit returns: `history[name]` lists one value per completed epoch, under Keras'
    names: loss, accuracy, and val_loss, val_accuracy when there is validation data."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def shuffle_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The row order of epoch `epoch` (0-based) for a model seeded with `seed`: the one place
    both backends take their batches from."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n).astype(np.int64)


def aligned_zeros(n: int) -> np.ndarray:
    """n float32 zeros starting on a cache-line boundary. The training team splits weight and
    activation blocks at multiples of 16 floats; aligned, no cache line is then written by
    two threads (false sharing made the split first layer 3x slower)."""
    pad = CACHE_LINE // 4
    raw = np.zeros(n + pad, dtype=np.float32)
    start = (-raw.ctypes.data % CACHE_LINE) // 4
    return raw[start:start + n]


# ---- input checks ------------------------------------------------------------------------

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
                check_finite: bool = True) -> np.ndarray:
    """x as a C-contiguous float32 (n, prod(input_shape)) array of flattened samples the
    kernels may read. For input_shape (28, 28, 1), x may be (n, 28, 28, 1), (n, 28, 28) or
    (n, 784); for (784,), (n, 784).

    float32 is used as is when C-contiguous (else copied); other float dtypes are converted
    once. Integer images are refused rather than guessed at: scale them yourself, e.g.
    `x.astype(np.float32) / 255`. NaN or Inf is an error (unless check_finite is False: for
    a caller whose kernels check the rows as they read them)."""
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
    if x.dtype.kind in "iub":
        raise TypeError(f"{name} has integer dtype {x.dtype}; scale it to floats first, "
                        f"e.g. {name}.astype(np.float32) / 255")
    if x.dtype.kind != "f":
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
    x = np.ascontiguousarray(x.reshape(x.shape[0], dim), dtype=np.float32)
    if check_finite and not fast.all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


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


# ---- progress log ------------------------------------------------------------------------

def _format_rate(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def format_epoch_line(step: int, steps: int, elapsed: float, logs: dict[str, float]) -> str:
    """Keras 3's per-epoch line: `1875/1875 - 1s - 533us/step - accuracy: 0.9 - loss: 0.3`."""
    width = len(str(steps))
    parts = [f"{step:>{width}}/{steps}", f"{elapsed:.0f}s", _format_rate(elapsed / max(step, 1))]
    parts += [f"{key}: {value:.4f}" for key, value in sorted(logs.items())]
    return " - ".join(parts)


class _ProgressLog:
    """Prints `Epoch i/n` and the Keras line; on a terminal the step counter moves in place."""

    def __init__(self, verbose: int, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        self.live = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()

    def epoch_start(self, epoch: int, epochs: int) -> None:
        if self.verbose:
            print(f"Epoch {epoch}/{epochs}", file=self.stream, flush=True)

    def update(self, step: int, steps: int, elapsed: float, logs: dict[str, float]) -> None:
        if self.live:
            line = format_epoch_line(step, steps, elapsed, logs)
            print("\r" + line, end="", file=self.stream, flush=True)

    def epoch_end(self, steps: int, elapsed: float, logs: dict[str, float]) -> None:
        if self.verbose:
            prefix = "\r" if self.live else ""
            line = format_epoch_line(steps, steps, elapsed, logs)
            print(prefix + line, file=self.stream, flush=True)


# ---- the model ---------------------------------------------------------------------------

def _input_shape(layers: Sequence[Layer], input_dim: Any, input_shape: Any) -> Shape:
    """The per-sample input shape from input_dim or input_shape (not both); neither: MNIST's,
    as images (28, 28, 1) when the first layer takes images, else rows of 784."""
    if input_dim is not None and input_shape is not None:
        raise ValueError("give input_dim (rows of features) or input_shape, not both")
    if input_dim is not None:
        return (_positive_int(input_dim, "input_dim"),)
    if input_shape is None:
        images = (Conv2D, MaxPool2D, RandomTranslation)
        return MNIST_IMAGE if isinstance(layers[0], images) else (784,)
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (1, 3):
        raise ValueError(f"input_shape must be (features,) or (height, width, channels), got "
                         f"{input_shape!r}")
    return tuple(_positive_int(v, "input_shape") for v in input_shape)


def _validation_split(value: Any, validation_data: Any) -> float:
    """validation_split, checked: 0 (none) or in (0, 1), and not with validation_data."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"validation_split must be a number, got {type(value).__name__}")
    if value == 0:
        return 0.0
    if not 0 < value < 1:
        raise ValueError(f"validation_split must lie in (0, 1), got {value}")
    if validation_data is not None:
        raise ValueError("give validation_data or validation_split, not both")
    return float(value)


def _split_off(x: np.ndarray, targets: np.ndarray, split: float):
    """(x, targets, (x_val, targets_val)): the last `split` of the rows held out, as Keras
    (before any shuffling)."""
    n = x.shape[0]
    at = math.floor(n * (1.0 - split))
    if at == 0 or at == n:
        raise ValueError(f"x has {n} rows, too few to split into training and validation "
                         f"rows with validation_split={split}")
    return x[:at], targets[:at], (x[at:], targets[at:])


class Model:
    """A stack of layers trained by minibatch gradient descent.

    Args:
        layers: Dense, Conv2D, MaxPool2D, Flatten and Dropout layers, input side first.
        input_dim: width of each input row, for a net of Dense layers (784 for MNIST).
        input_shape: or the shape of one sample: (784,) or, channels last, (28, 28, 1).
            Neither given: MNIST's, (28, 28, 1) if the first layer is a Conv2D or
            MaxPool2D, else (784,).
        loss: "mse" or "categorical_crossentropy" (needs a softmax output layer).
        optimizer: SGD (default SGD(0.01)) or Adam.
        seed: seeds the Glorot-uniform initialisation, every epoch's shuffle and the dropout
            masks.
        backend: "fast" (compiled kernels) or "reference" (NumPy twin).
    """

    def __init__(self, layers: Sequence[Layer], input_dim: int | None = None,
                 loss: str = "mse", optimizer: Optimizer | None = None, seed: int = 0,
                 backend: str = "fast", input_shape: Sequence[int] | None = None) -> None:
        if isinstance(layers, Layer) or not isinstance(layers, Sequence) or not layers:
            raise TypeError("layers must be a non-empty list of layers (Dense, Conv2D, ...)")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a layer (Dense, Conv2D, MaxPool2D, "
                                f"Flatten, Dropout, ...), got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_shape = _input_shape(self.layers, input_dim, input_shape)
        self.loss = _choice(loss, LOSSES, "loss")
        if self.loss == "categorical_crossentropy" and self.layers[-1].activation != "softmax":
            raise ValueError("loss 'categorical_crossentropy' needs a softmax output layer, "
                             f"got {self.layers[-1].activation!r}")
        if optimizer is None:
            optimizer = SGD()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an SGD, Adam, AdamW or RMSprop, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.seed = _positive_int(seed, "seed", minimum=0)
        self.backend = backend

        self.plan = Plan(self.layers, self.input_shape)
        self._loss_code = reference.LOSSES[self.loss]
        self.params = aligned_zeros(self.plan.n_params)
        self.grads = aligned_zeros(self.plan.n_params)
        self.optimizer_state = aligned_zeros(optimizer.slots * self.plan.n_params)
        self._views = self.plan.weight_views(self.params)
        self._epochs_done = 0
        self.history: History | None = None  # the running or last fit's History
        self.stop_training = False  # a callback sets it to end fit after this epoch
        self.fit_batch_size: int | None = None  # the last fit's (saved: resume needs it)
        self.fit_validation_split: float | None = None  # likewise
        self._training = threading.Lock()
        self._initialise()

    # -- construction ----------------------------------------------------------------------
    def _initialise(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        views = iter(self._views)
        for layer, shape in zip(self.layers, self.plan.shapes, strict=False):
            # The layer's arrays first: zip must not take a view it has no value for.
            for value, view in zip(layer.initial_weights(rng, shape), views, strict=False):
                view[...] = value

    @property
    def backend(self) -> str:
        """"fast" or "reference"; may be switched at any time between calls."""
        return self._backend_name

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend_name = _choice(name, tuple(BACKENDS), "backend")
        self._kernels = BACKENDS[name]

    @property
    def input_dim(self) -> int:
        """Floats per sample (784 for MNIST, images flattened)."""
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return self.plan.n_outputs

    @property
    def sizes(self) -> np.ndarray:
        """Layer widths, input first (int32), of a net of Dense layers."""
        if not self.plan.dense_only:
            raise AttributeError("sizes describes nets of Dense layers only; see model.plan")
        return np.array(self.plan.widths, dtype=np.int32)

    @property
    def epochs_trained(self) -> int:
        """Epochs completed by fit so far (over all calls); sets the next epoch's shuffle."""
        return self._epochs_done

    @classmethod
    def from_config(cls, config: dict[str, Any], backend: str = "fast") -> Model:
        """A model with the architecture get_config() describes (and fresh weights from its
        seed); also reads format 1's config (Dense layers, input_dim, SGD)."""
        layers = [layer_from_config(layer) for layer in config["layers"]]
        shape = config.get("input_shape")
        return cls(layers, input_dim=config["input_dim"] if shape is None else None,
                   input_shape=shape, loss=config["loss"],
                   optimizer=optimizer_from_config(config["optimizer"]), seed=config["seed"],
                   backend=backend)

    def get_config(self) -> dict[str, Any]:
        """The architecture, loss, optimizer and seed as JSON-able values."""
        return {"layers": [layer_to_config(layer) for layer in self.layers],
                "input_shape": list(self.input_shape), "loss": self.loss,
                "optimizer": optimizer_to_config(self.optimizer), "seed": self.seed}

    def _training_state(self) -> dict[str, Any]:
        """What training depends on beyond the architecture: weights, optimizer state and
        step count, epochs done (the next shuffle and dropout keys)."""
        return {"params": self.params.copy(), "optimizer_state": self.optimizer_state.copy(),
                "iterations": self.optimizer.iterations, "epochs_done": self._epochs_done}

    def _restore_training_state(self, state: dict[str, Any]) -> None:
        self.params[...] = state["params"]
        self.optimizer_state[...] = state["optimizer_state"]
        self.optimizer.iterations = int(state["iterations"])
        self._epochs_done = int(state["epochs_done"])

    def __getstate__(self) -> dict[str, Any]:
        # Pickle (multiprocessing, joblib) as architecture + training state: the training
        # lock and the backend module are rebuilt, not copied.
        return {"config": self.get_config(), "backend": self.backend, **self._training_state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(type(self).from_config(state["config"], state["backend"]).__dict__)
        state.setdefault("optimizer_state", self.optimizer_state)
        state.setdefault("iterations", 0)
        self._restore_training_state(state)

    def __repr__(self) -> str:
        if self.plan.dense_only:
            arch = "-".join(str(w) for w in self.plan.widths)
        else:
            arch = f"{self.input_shape} -> " + " -> ".join(type(la).__name__
                                                            for la in self.layers)
        return f"Model({arch}, loss={self.loss!r}, backend={self.backend!r})"

    def summary(self) -> str:
        """A table of the layers with their output shapes and weight counts (also printed)."""
        rows = [("layer", "output shape", "params")]
        for d in self.plan.describe():
            rows.append((f"{d['class']}", str(tuple(d["output_shape"])), str(d["params"])))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(f"input {self.input_shape}; {self.plan.n_params:,} weights; loss "
                     f"{self.loss}; {self.optimizer!r}")
        text = "\n".join(lines)
        print(text)
        return text

    # -- weights ---------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Copies of [kernel0, bias0, kernel1, bias1, ...] in Keras' shapes and order: a Dense
        kernel is (inputs, units), a Conv2D kernel (kh, kw, in_channels, filters)."""
        return [a.copy() for a in self._views]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Write [kernel0, bias0, ...] (get_weights' shapes) into the model's parameter block
        (all or nothing)."""
        expected = self._views
        weights = list(weights)
        if len(weights) != len(expected):
            raise ValueError(f"set_weights needs {len(expected)} arrays "
                             f"(kernel and bias per layer with weights), got {len(weights)}")
        converted = []
        for i, (new, old) in enumerate(zip(weights, expected, strict=True)):
            new = np.asarray(new)
            if new.dtype.kind != "f":
                raise TypeError(f"weights[{i}] must be floating point, got dtype {new.dtype}")
            if new.shape != old.shape:
                raise ValueError(f"weights[{i}] has shape {new.shape}, expected {old.shape}")
            with np.errstate(over="ignore"):
                new = new.astype(np.float32)
            if not np.isfinite(new).all():
                raise ValueError(f"weights[{i}] contains NaN or Inf (or values beyond float32)")
            converted.append(new)
        for new, old in zip(converted, expected, strict=True):
            old[...] = new

    # -- training --------------------------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None, verbose: int = 1,
            shuffle: bool = True, callbacks: Sequence[Callback] | None = None,
            validation_split: float = 0.0) -> History:
        """Train for `epochs` epochs of minibatch gradient descent; returns a History.

        x: float samples of input_shape (or flattened); float64 is converted to float32 once.
        y: integer labels (n,) or one-hot (n, outputs). Each epoch's row order comes from the
        model's seed and the number of epochs trained so far (shuffle_order), the same for
        both backends, and so do the dropout masks. The epoch runs in compiled code without
        the GIL (fast backend). Ctrl-C stops between two steps with KeyboardInterrupt; the
        model keeps the last completed step. A NaN/Inf loss stops training with a
        RuntimeWarning, before that batch's update. NaN or Inf in x is a ValueError, and the
        model is left as it was: the epoch checks each batch's rows as it reads them (one
        pass over x fewer than a check up front).

        validation_split: in (0, 1), Keras' meaning: the last fraction of the rows of x and
        y, taken before shuffling, is held out and scored after each epoch as val_loss and
        val_accuracy (not with validation_data). callbacks: mnistnet.callbacks.Callback
        objects, run between epochs (the epoch itself stays one native call); one may stop
        training with `model.stop_training = True`. An exception raised by a callback
        reaches the caller, the model holding the last completed epoch.
        """
        epochs = _positive_int(epochs, "epochs", minimum=0)
        batch_size = _positive_int(batch_size, "batch_size")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        split = _validation_split(validation_split, validation_data)
        # Unless no epoch will read them, the epoch checks x's rows (see _fit).
        x = as_features(x, self.input_shape, check_finite=epochs == 0)
        targets = as_targets(y, x.shape[0], self.n_outputs)
        if x.shape[0] == 0:
            raise ValueError("x has no rows")
        names = ("validation_data[0]", "validation_data[1]")
        if split:
            x, targets, validation_data = _split_off(x, targets, split)
            names = (f"x's last {split} (validation_split)", f"y's last {split}")
        val = self._validation_arrays(validation_data, names)
        batch_size = min(batch_size, x.shape[0])
        metrics = ["loss", "accuracy"] + (["val_loss", "val_accuracy"] if val else [])
        hooks = CallbackList(callbacks, self, {
            "epochs": epochs, "steps": -(-x.shape[0] // batch_size), "verbose": verbose,
            "metrics": metrics})
        if not self._training.acquire(blocking=False):
            raise RuntimeError("this model is already training (fit is running in another "
                               "thread); wait for it or train a copy")
        try:
            self.fit_validation_split = split or None
            return self._fit(x, targets, epochs, batch_size, val, _ProgressLog(verbose),
                             shuffle, hooks)
        finally:
            self._training.release()

    def _validation_arrays(self, validation_data,
                           names: tuple[str, str] = ("validation_data[0]", "validation_data[1]")):
        """(x_val, targets) checked, errors naming them as `names`."""
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        xv = as_features(validation_data[0], self.input_shape, names[0])
        if xv.shape[0] == 0:
            raise ValueError(f"{names[0]} has no rows")
        yv = as_targets(validation_data[1], xv.shape[0], self.n_outputs, names[1])
        return xv, yv

    def _training_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The activation and activation-gradient blocks for training `rows` at a time,
        cache-aligned, the latter with workspace for the compiled epoch's threads."""
        threads = fast.get_num_threads() if self.backend == "fast" else 1
        _, n_acts, n_dacts = self.plan.buffer_sizes(rows, threads)
        return aligned_zeros(n_acts), aligned_zeros(n_dacts)

    def _epoch_arguments(self, acts, dacts, x, targets, order, batch_size, first_step):
        """train_epoch's arguments for the batches of `order`, the first being step
        first_step of the epoch."""
        steps = -(-len(order) // batch_size)
        rates = self.optimizer.rates(self.optimizer.iterations, steps)
        return (self.plan, self.params, self.grads, self.optimizer_state, acts, dacts,
                self._loss_code, x, targets, order, batch_size,
                self.optimizer.kernel_settings(), rates, self.optimizer.iterations,
                (self.seed, self._epochs_done, first_step))

    def _fit(self, x, targets, epochs, batch_size, val, log, shuffle, hooks) -> History:
        # What a ValueError for NaN/Inf in x puts back.
        before = (self._training_state(), self.grads.copy(), self.history)
        # Kept on the model as it grows, so after Ctrl-C `model.history` holds the
        # completed epochs (as in Keras).
        history = self.history = History()
        acts, dacts = self._training_buffers(batch_size)
        self.fit_batch_size = batch_size
        n = x.shape[0]
        steps = -(-n // batch_size)
        self.stop_training = False
        hooks.on_train_begin()
        for epoch in range(epochs):
            if self.stop_training:
                break
            hooks.on_epoch_begin(self._epochs_done)
            log.epoch_start(epoch + 1, epochs)
            order = (shuffle_order(self.seed, self._epochs_done, n) if shuffle
                     else np.arange(n, dtype=np.int64))
            start = time.perf_counter()
            totals = [0.0, 0, 0, 0]  # loss_sum, correct, seen, batches
            status = reference.EPOCH_DONE
            # On a terminal the step counter moves: run the epoch in a few compiled segments.
            segments = 20 if log.live else 1
            seg_steps = -(-steps // segments)
            for first in range(0, steps, seg_steps):
                rows = order[first * batch_size: (first + seg_steps) * batch_size]
                result = self._kernels.train_epoch(*self._epoch_arguments(
                    acts, dacts, x, targets, rows, batch_size, first))
                self.optimizer.iterations += result[3]
                for i in range(4):
                    totals[i] += result[i]
                status = result[4]
                if status != reference.EPOCH_DONE:
                    break
                log.update(totals[3], steps, time.perf_counter() - start,
                           self._train_logs(totals))
            if status == reference.EPOCH_NONFINITE_INPUT or (
                    status == reference.EPOCH_NONFINITE_LOSS
                    and not self._kernels.all_finite(x)):  # rows the epoch did not reach
                state, self.grads[:], self.history = before
                self._restore_training_state(state)
                raise ValueError("x contains NaN or Inf")
            if status == reference.EPOCH_NONFINITE_LOSS:
                warnings.warn(f"loss became NaN or Inf at epoch {epoch + 1}, batch "
                              f"{totals[3] + 1}; training stopped (the weights are finite: "
                              f"that batch's update was not applied, or where it would "
                              f"have overflowed float32, not to those weights)",
                              RuntimeWarning, stacklevel=3)
                break
            self._epochs_done += 1
            logs = self._train_logs(totals)
            if val is not None:
                scores = self._evaluate_arrays(*val)
                logs["val_loss"] = scores["loss"]
                logs["val_accuracy"] = scores["accuracy"]
            log.epoch_end(steps, time.perf_counter() - start, logs)
            hooks.on_epoch_end(self._epochs_done - 1, logs)
            history.append(epoch, logs)
        hooks.on_train_end()
        return history

    @staticmethod
    def _train_logs(totals) -> dict[str, float]:
        loss_sum, correct, seen, _ = totals
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    # -- inference -------------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
        """Outputs (n, outputs) float32 for x, samples of input_shape or flattened (dropout
        is off); safe to call from several threads at once (each call has its own scratch
        buffers)."""
        return self._predict_array(as_features(x, self.input_shape),
                                   _positive_int(batch_size, "batch_size"))

    def _predict_array(self, x: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
        """predict for x already through as_features (fit's validation data, every epoch)."""
        out = np.empty((x.shape[0], self.n_outputs), dtype=np.float32)
        if x.shape[0] == 0:
            return out
        chunk = min(batch_size, x.shape[0])
        acts = np.empty(chunk * self.plan.acts_per_row, dtype=np.float32)
        return self._kernels.predict(self.plan, self.params, acts, x, out, chunk)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """{"loss": mean loss over the rows, "accuracy": fraction with the right argmax}."""
        x = as_features(x, self.input_shape)
        targets = as_targets(y, x.shape[0], self.n_outputs)
        if x.shape[0] == 0:
            raise ValueError("x has no rows")
        return self._evaluate_arrays(x, targets)

    def _evaluate_arrays(self, x, targets) -> dict[str, float]:
        pred = self._predict_array(x)
        k = self._kernels
        loss = (k.crossentropy_forward(pred, targets) if self.loss == "categorical_crossentropy"
                else k.mse_forward(pred, targets))
        loss += reference.l2_penalty(self.plan, self.params)  # Keras reports it in the loss
        return {"loss": float(loss), "accuracy": k.count_correct(pred, targets) / x.shape[0]}

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture, weights, optimizer state and training position to an .npz
        file, atomically (a temporary file in the same folder, then a rename): a crash never
        leaves a half-written model. See mnistnet.saving."""
        from mnistnet import saving

        saving.save_model(self, path)

    def export_onnx(self, path: str | os.PathLike, opset: int = 13) -> Path:
        """Write the model as an ONNX graph of standard operators, dynamic batch (see
        mnistnet.export.export_onnx); needs the optional extra mnistnet[onnx]."""
        from mnistnet import export

        return export.export_onnx(self, path, opset)

    def export_c(self, directory: str | os.PathLike, name: str = "model") -> tuple[Path, Path]:
        """Write DIR/<name>.h and DIR/<name>.c: the model as dependency-free C99 with one
        function, `int <name>_predict(const float *input, float *output)` (see
        mnistnet.export.export_c)."""
        from mnistnet import export

        return export.export_c(self, directory, name)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "fast") -> Model:
        """Read a model written by save() (format 2, or format 1 of mnistnet 0.1). Never
        unpickles; checks the format version and that the weights fit the architecture.
        Raises ValueError naming the file."""
        from mnistnet import saving

        return saving.load_model(path, backend)


# ---- the tutorial's networks and the convnet ---------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "perceptron": {"layers": [(10, "sigmoid")], "loss": "mse"},
    "hidden-relu": {"layers": [(128, "relu"), (64, "relu"), (10, "sigmoid")], "loss": "mse"},
    "cross-entropy": {"layers": [(128, "relu"), (64, "relu"), (10, "softmax")],
                      "loss": "categorical_crossentropy"},
    "convnet": {"loss": "categorical_crossentropy"},
    "convnet-plus": {"loss": "categorical_crossentropy"},
}
# Each preset's training recipe, as the tutorial (SGD 0.01, batch 32, 30 epochs) and Keras'
# "Simple MNIST convnet" example (Adam 0.001, batch 128, 15 epochs) train them.
RECIPES: dict[str, dict[str, Any]] = {
    "perceptron": {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32, "epochs": 30},
    "hidden-relu": {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32, "epochs": 30},
    "cross-entropy": {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32,
                      "epochs": 30},
    "convnet": {"optimizer": "adam", "learning_rate": 0.001, "batch_size": 128, "epochs": 15},
    # The learning rate is the one-cycle schedule's peak (the schedule spans the epochs).
    "convnet-plus": {"optimizer": "adam", "learning_rate": 0.003, "batch_size": 128,
                     "epochs": 15, "schedule": "onecycle"},
}
MNIST_TRAIN_ROWS = 60_000


def convnet_layers() -> list[Layer]:
    """Keras' "Simple MNIST convnet": 34,826 weights."""
    return [Conv2D(32, 3, activation="relu"), MaxPool2D(2),
            Conv2D(64, 3, activation="relu"), MaxPool2D(2),
            Flatten(), Dropout(0.5), Dense(10, activation="softmax")]


def convnet_plus_layers() -> list[Layer]:
    """The convnet made stronger the usual ways: random shifts of up to 10% of the image,
    three 3x3 convolutions (32, 32, 64 filters) each followed by BatchNormalization and a
    relu, and dropout 0.3 before the output layer."""
    return [RandomTranslation(0.1, 0.1),
            Conv2D(32, 3), BatchNormalization(), Activation("relu"),
            Conv2D(32, 3), BatchNormalization(), Activation("relu"), MaxPool2D(2),
            Conv2D(64, 3), BatchNormalization(), Activation("relu"), MaxPool2D(2),
            Flatten(), Dropout(0.3), Dense(10, activation="softmax")]


def recipe_optimizer(name: str, learning_rate: float | None = None,
                     rows: int = MNIST_TRAIN_ROWS) -> Optimizer:
    """The optimizer of a preset's recipe for `rows` training rows; learning_rate replaces
    the recipe's rate (a schedule's peak)."""
    recipe = RECIPES[name]
    rate = recipe["learning_rate"] if learning_rate is None else learning_rate
    if recipe.get("schedule") == "onecycle":
        steps = recipe["epochs"] * -(-rows // recipe["batch_size"])
        rate = OneCycle(rate, steps)
    return Adam(rate) if recipe["optimizer"] == "adam" else SGD(rate)


def preset(name: str, seed: int = 0, backend: str = "fast",
           learning_rate: float | None = None, optimizer: Optimizer | None = None) -> Model:
    """One of the tutorial's networks, or the convnet:

    - "perceptron": 784-10 sigmoid, MSE;
    - "hidden-relu": 784-128-64-10, relu/sigmoid, MSE;
    - "cross-entropy": the same with softmax and categorical cross-entropy;
    - "convnet": Keras' "Simple MNIST convnet" (Conv2D 32x3x3 relu, MaxPool2D 2, Conv2D
      64x3x3 relu, MaxPool2D 2, Flatten, Dropout 0.5, Dense 10 softmax) on (28, 28, 1);
    - "convnet-plus": RandomTranslation, three convolutions each with BatchNormalization,
      trained by Adam on a one-cycle schedule (see convnet_plus_layers).

    Glorot-uniform weights; the optimizer of the preset's recipe (RECIPES: SGD 0.01 for the
    tutorial's three, Adam 0.001 for the convnet, Adam on OneCycle(0.003) over 15 epochs of
    MNIST's 60,000 images for convnet-plus) unless `optimizer` is given; learning_rate
    replaces the recipe's rate."""
    spec = PRESETS[_choice(name, tuple(PRESETS), "preset")]
    if optimizer is None:
        optimizer = recipe_optimizer(name, learning_rate)
    elif learning_rate is not None:
        raise ValueError("give learning_rate or optimizer, not both")
    if name in ("convnet", "convnet-plus"):
        layers = convnet_layers() if name == "convnet" else convnet_plus_layers()
        return Model(layers, input_shape=MNIST_IMAGE, loss=spec["loss"],
                     optimizer=optimizer, seed=seed, backend=backend)
    return Model([Dense(units, activation=act) for units, act in spec["layers"]],
                 input_dim=784, loss=spec["loss"], optimizer=optimizer, seed=seed,
                 backend=backend)
