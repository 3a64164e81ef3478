"""Dense, SGD, Model and History: a thin layer that owns the buffers and calls the kernels.

A Model keeps every parameter in one contiguous float32 block (W0, b0, W1, b1, ... with each
W stored (in, out) as in Keras), the gradients in a second block of the same layout, and the
activations of one batch in a third; `get_weights()` returns copies of views into the first.
The backend ("fast": compiled, or "reference": NumPy) only decides which module's kernels
run over those buffers; initialisation, shuffling and validation are shared, so both backends
see identical batches from identical weights.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistnet import fast, reference
from mnistnet._version import __version__

BACKENDS = {"fast": fast, "reference": reference}
ACTIVATIONS = tuple(reference.ACTIVATIONS)
LOSSES = tuple(reference.LOSSES)
FORMAT_VERSION = 1
PREDICT_CHUNK = 256  # rows per forward pass in predict/evaluate: keeps activations in cache
CACHE_LINE = 64  # bytes


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


class Dense:
    """A fully connected layer: output = activation(input @ W + b).

    Args:
        units: number of outputs.
        activation: "linear", "sigmoid", "relu" or "softmax".
    """

    def __init__(self, units: int, activation: str = "linear") -> None:
        self.units = _positive_int(units, "units")
        self.activation = _choice(activation, ACTIVATIONS, "activation")

    def get_config(self) -> dict[str, Any]:
        return {"units": self.units, "activation": self.activation}

    def __repr__(self) -> str:
        return f"Dense({self.units}, activation={self.activation!r})"


class SGD:
    """Plain stochastic gradient descent: w -= learning_rate * grad (Keras' default 0.01)."""

    def __init__(self, learning_rate: float = 0.01) -> None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float,
                                                                               np.floating)):
            raise TypeError(f"learning_rate must be a number, got {type(learning_rate).__name__}")
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate}")
        lo, hi = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
        if not lo <= learning_rate <= hi:  # the kernels compute in float32
            raise ValueError(f"learning_rate must lie in [{lo:.3g}, {hi:.3g}] (float32), "
                             f"got {learning_rate}")
        self.learning_rate = float(learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}

    def __repr__(self) -> str:
        return f"SGD(learning_rate={self.learning_rate})"


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


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """Keras' default kernel initialiser: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


# ---- input checks ------------------------------------------------------------------------

def as_features(x: Any, input_dim: int, name: str = "x",
                check_finite: bool = True) -> np.ndarray:
    """x as a C-contiguous float32 (n, input_dim) array the kernels may read.

    float32 is used as is when C-contiguous (else copied); other float dtypes are converted
    once. Integer images are refused rather than guessed at: scale them yourself, e.g.
    `x.astype(np.float32) / 255`. NaN or Inf is an error (unless check_finite is False: for
    a caller whose kernels check the rows as they read them)."""
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
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, {input_dim}), got shape {x.shape}")
    if x.shape[1] != input_dim:
        raise ValueError(f"{name} has {x.shape[1]} columns but the model's input_dim is "
                         f"{input_dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
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
        if n and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} has labels outside 0..{n_classes - 1} "
                             f"(min {y.min()}, max {y.max()})")
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

class Model:
    """A stack of Dense layers trained by minibatch SGD.

    Args:
        layers: the Dense layers, input side first.
        input_dim: width of each input row (784 for MNIST).
        loss: "mse" or "categorical_crossentropy" (needs a softmax output layer).
        optimizer: an SGD; default SGD(0.01).
        seed: seeds the Glorot-uniform initialisation and every epoch's shuffle.
        backend: "fast" (compiled kernels) or "reference" (NumPy twin).
    """

    def __init__(self, layers: Sequence[Dense], input_dim: int = 784, loss: str = "mse",
                 optimizer: SGD | None = None, seed: int = 0, backend: str = "fast") -> None:
        if isinstance(layers, Dense) or not isinstance(layers, Sequence) or not layers:
            raise TypeError("layers must be a non-empty list of Dense")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Dense):
                raise TypeError(f"layers[{i}] must be a Dense, got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_dim = _positive_int(input_dim, "input_dim")
        self.loss = _choice(loss, LOSSES, "loss")
        if self.loss == "categorical_crossentropy" and self.layers[-1].activation != "softmax":
            raise ValueError("loss 'categorical_crossentropy' needs a softmax output layer, "
                             f"got {self.layers[-1].activation!r}")
        if optimizer is None:
            optimizer = SGD()
        if not isinstance(optimizer, SGD):
            raise TypeError(f"optimizer must be an SGD, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.seed = _positive_int(seed, "seed", minimum=0)
        self.backend = backend

        self.sizes = np.array([self.input_dim] + [layer.units for layer in self.layers],
                              dtype=np.int32)
        self.act_codes = np.array([reference.ACTIVATIONS[layer.activation]
                                   for layer in self.layers], dtype=np.int32)
        self._loss_code = reference.LOSSES[self.loss]
        n_params, _, _ = reference.buffer_sizes(self.sizes, 1)
        self.params = aligned_zeros(n_params)
        self.grads = aligned_zeros(n_params)
        self._views = reference.layer_views(self.params, self.sizes)
        self._epochs_done = 0
        self.history: History | None = None  # the running or last fit's History
        self._training = threading.Lock()
        self._initialise()

    # -- construction ----------------------------------------------------------------------
    def _initialise(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        for w, b in self._views:
            w[...] = glorot_uniform(rng, *w.shape)
            b[...] = 0

    @property
    def backend(self) -> str:
        """"fast" or "reference"; may be switched at any time between calls."""
        return self._backend_name

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend_name = _choice(name, tuple(BACKENDS), "backend")
        self._kernels = BACKENDS[name]

    @property
    def n_outputs(self) -> int:
        return int(self.sizes[-1])

    @property
    def epochs_trained(self) -> int:
        """Epochs completed by fit so far (over all calls); sets the next epoch's shuffle."""
        return self._epochs_done

    @classmethod
    def from_config(cls, config: dict[str, Any], backend: str = "fast") -> Model:
        """A model with the architecture get_config() describes (and fresh weights from its
        seed)."""
        return cls([Dense(**layer) for layer in config["layers"]],
                   input_dim=config["input_dim"], loss=config["loss"],
                   optimizer=SGD(**config["optimizer"]), seed=config["seed"], backend=backend)

    def get_config(self) -> dict[str, Any]:
        return {"layers": [layer.get_config() for layer in self.layers],
                "input_dim": self.input_dim, "loss": self.loss,
                "optimizer": self.optimizer.get_config(), "seed": self.seed}

    def __getstate__(self) -> dict[str, Any]:
        # Pickle (multiprocessing, joblib) as architecture + weights: the training lock and
        # the backend module are rebuilt, not copied.
        return {"config": self.get_config(), "params": self.params.copy(),
                "backend": self.backend, "epochs_done": self._epochs_done}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(type(self).from_config(state["config"], state["backend"]).__dict__)
        self.params[...] = state["params"]
        self._epochs_done = state["epochs_done"]

    def __repr__(self) -> str:
        widths = "-".join(str(int(s)) for s in self.sizes)
        return f"Model({widths}, loss={self.loss!r}, backend={self.backend!r})"

    # -- weights ---------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Copies of [W0, b0, W1, b1, ...], each W of shape (in, out)."""
        return [a.copy() for pair in self._views for a in pair]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Write [W0, b0, W1, b1, ...] into the model's parameter block (all or nothing)."""
        expected = [a for pair in self._views for a in pair]
        weights = list(weights)
        if len(weights) != len(expected):
            raise ValueError(f"set_weights needs {len(expected)} arrays "
                             f"(W and b per layer), got {len(weights)}")
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
            shuffle: bool = True) -> History:
        """Train for `epochs` epochs of minibatch SGD; returns a History.

        x: float (n, input_dim); float64 is converted to float32 once. y: integer labels (n,)
        or one-hot (n, outputs). Each epoch's row order comes from the model's seed and the
        number of epochs trained so far (shuffle_order), the same for both backends.
        The epoch runs in compiled code without the GIL (fast backend). Ctrl-C stops between
        two steps with KeyboardInterrupt; the model keeps the last completed step. A NaN/Inf
        loss stops training with a RuntimeWarning, before that batch's update. NaN or Inf in x
        is a ValueError, and the model is left as it was: the epoch checks each batch's rows
        as it reads them (one pass over x fewer than a check up front).
        """
        epochs = _positive_int(epochs, "epochs", minimum=0)
        batch_size = _positive_int(batch_size, "batch_size")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        # Unless no epoch will read them, the epoch checks x's rows (see _fit).
        x = as_features(x, self.input_dim, check_finite=epochs == 0)
        targets = as_targets(y, x.shape[0], self.n_outputs)
        if x.shape[0] == 0:
            raise ValueError("x has no rows")
        val = self._validation_arrays(validation_data)
        if not self._training.acquire(blocking=False):
            raise RuntimeError("this model is already training (fit is running in another "
                               "thread); wait for it or train a copy")
        try:
            return self._fit(x, targets, epochs, min(batch_size, x.shape[0]), val,
                             _ProgressLog(verbose), shuffle)
        finally:
            self._training.release()

    def _validation_arrays(self, validation_data):
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        xv = as_features(validation_data[0], self.input_dim, "validation_data[0]")
        if xv.shape[0] == 0:
            raise ValueError("validation_data[0] has no rows")
        yv = as_targets(validation_data[1], xv.shape[0], self.n_outputs, "validation_data[1]")
        return xv, yv

    def _training_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The activation and activation-gradient blocks for training `rows` at a time,
        cache-aligned, the latter with workspace for the compiled epoch's threads."""
        threads = fast.get_num_threads() if self.backend == "fast" else 1
        _, n_acts, n_dacts = reference.buffer_sizes(self.sizes, rows, threads)
        return aligned_zeros(n_acts), aligned_zeros(n_dacts)

    def _fit(self, x, targets, epochs, batch_size, val, log, shuffle) -> History:
        # What a ValueError for NaN/Inf in x puts back.
        before = (self.params.copy(), self.grads.copy(), self.history, self._epochs_done)
        # Kept on the model as it grows, so after Ctrl-C `model.history` holds the
        # completed epochs (as in Keras).
        history = self.history = History()
        acts, dacts = self._training_buffers(batch_size)
        n = x.shape[0]
        steps = -(-n // batch_size)
        lr = self.optimizer.learning_rate
        for epoch in range(epochs):
            log.epoch_start(epoch + 1, epochs)
            order = (shuffle_order(self.seed, self._epochs_done, n) if shuffle
                     else np.arange(n, dtype=np.int64))
            start = time.perf_counter()
            totals = [0.0, 0, 0, 0]  # loss_sum, correct, seen, batches
            status = reference.EPOCH_DONE
            # On a terminal the step counter moves: run the epoch in a few compiled segments.
            segments = 20 if log.live else 1
            seg_rows = -(-steps // segments) * batch_size
            for s0 in range(0, n, seg_rows):
                result = self._kernels.train_epoch(
                    self.params, self.grads, acts, dacts, self.sizes, self.act_codes,
                    self._loss_code, x, targets, order[s0: s0 + seg_rows], batch_size, lr)
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
                self.params[:], self.grads[:], self.history, self._epochs_done = before
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
            history.append(epoch, logs)
            log.epoch_end(steps, time.perf_counter() - start, logs)
        return history

    @staticmethod
    def _train_logs(totals) -> dict[str, float]:
        loss_sum, correct, seen, _ = totals
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    # -- inference -------------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
        """Outputs (n, outputs) float32 for x (n, input_dim); safe to call from several
        threads at once (each call has its own scratch buffers)."""
        return self._predict_array(as_features(x, self.input_dim),
                                   _positive_int(batch_size, "batch_size"))

    def _predict_array(self, x: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
        """predict for x already through as_features (fit's validation data, every epoch)."""
        out = np.empty((x.shape[0], self.n_outputs), dtype=np.float32)
        if x.shape[0] == 0:
            return out
        chunk = min(batch_size, x.shape[0])
        _, n_acts, _ = reference.buffer_sizes(self.sizes, chunk)
        acts = np.empty(n_acts, dtype=np.float32)
        return self._kernels.predict(self.params, acts, self.sizes, self.act_codes, x, out,
                                     chunk)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """{"loss": mean loss over the rows, "accuracy": fraction with the right argmax}."""
        x = as_features(x, self.input_dim)
        targets = as_targets(y, x.shape[0], self.n_outputs)
        if x.shape[0] == 0:
            raise ValueError("x has no rows")
        return self._evaluate_arrays(x, targets)

    def _evaluate_arrays(self, x, targets) -> dict[str, float]:
        pred = self._predict_array(x)
        k = self._kernels
        loss = (k.crossentropy_forward(pred, targets) if self.loss == "categorical_crossentropy"
                else k.mse_forward(pred, targets))
        return {"loss": float(loss), "accuracy": k.count_correct(pred, targets) / x.shape[0]}

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture and weights to an .npz file, atomically (a temporary file
        in the same folder, then a rename): a crash never leaves a half-written model."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".mnistnet-", suffix=".npz.tmp", dir=folder)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            with os.fdopen(fd, "wb") as f:
                np.savez(f, format_version=np.array(FORMAT_VERSION),
                         config=np.array(json.dumps(self.get_config())),
                         params=self.params, mnistnet_version=np.array(__version__))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "fast") -> Model:
        """Read a model written by save(). Never unpickles; checks the format version and
        that the weights fit the architecture. Raises ValueError naming the file."""
        _choice(backend, tuple(BACKENDS), "backend")
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model file")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a mnistnet model file (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as exc:
            # Corrupt or truncated archives, object arrays (refused: never unpickle), ...
            reason = "it holds Python objects" if "allow_pickle" in str(exc) else exc
            raise ValueError(f"{path}: not a mnistnet model file ({reason})") from None
        return cls._from_arrays(arrays, path, backend)

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], path: str, backend: str) -> Model:
        missing = {"format_version", "config", "params"} - set(arrays)
        if missing:
            raise ValueError(f"{path}: not a mnistnet model file (missing "
                             f"{', '.join(sorted(missing))})")
        for key in ("format_version", "config", "params"):
            if not isinstance(arrays[key], np.ndarray):
                raise ValueError(f"{path}: not a mnistnet model file ({key} is not an array)")
        version = arrays["format_version"]
        if version.shape != () or version.dtype.kind not in "iu":
            raise ValueError(f"{path}: bad format_version")
        if int(version) != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {int(version)} is not supported "
                             f"(this mnistnet reads version {FORMAT_VERSION})")
        bad = (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)
        try:
            config = json.loads(str(arrays["config"][()]))
            layers = [Dense(**layer) for layer in config["layers"]]
            widths = [_positive_int(config["input_dim"], "input_dim")]
            widths += [layer.units for layer in layers]
        except bad as exc:
            raise ValueError(f"{path}: bad architecture in the model file ({exc})") from None
        # Check the weights' size against the architecture before allocating anything for it.
        n_params = sum(a * b + b for a, b in itertools.pairwise(widths))
        params = arrays["params"]
        if params.dtype != np.float32 or params.shape != (n_params,):
            raise ValueError(f"{path}: weights have dtype {params.dtype} and shape "
                             f"{params.shape}; the architecture needs float32 ({n_params},)")
        try:
            model = cls.from_config(config, backend)
        except bad as exc:
            raise ValueError(f"{path}: bad architecture in the model file ({exc})") from None
        if not np.isfinite(params).all():
            raise ValueError(f"{path}: weights contain NaN or Inf")
        model.params[...] = params
        return model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the tutorial's three networks -------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "perceptron": {"layers": [(10, "sigmoid")], "loss": "mse"},
    "hidden-relu": {"layers": [(128, "relu"), (64, "relu"), (10, "sigmoid")], "loss": "mse"},
    "cross-entropy": {"layers": [(128, "relu"), (64, "relu"), (10, "softmax")],
                      "loss": "categorical_crossentropy"},
}


def preset(name: str, seed: int = 0, backend: str = "fast", learning_rate: float = 0.01) -> Model:
    """One of the tutorial's networks: "perceptron" (784-10 sigmoid, MSE), "hidden-relu"
    (784-128-64-10, relu/sigmoid, MSE) or "cross-entropy" (the same with softmax and
    categorical cross-entropy); SGD(learning_rate), Glorot-uniform weights."""
    spec = PRESETS[_choice(name, tuple(PRESETS), "preset")]
    return Model([Dense(units, activation=act) for units, act in spec["layers"]],
                 input_dim=784, loss=spec["loss"], optimizer=SGD(learning_rate), seed=seed,
                 backend=backend)
