"""Model: a stack of layers over one parameter block, with its kernels, predict, evaluate,
save and load (fit comes from mnistnet.trainer.Trainer, as Keras' Model inherits its
trainer).

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
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnistnet import fast, losses, reference, saving
from mnistnet.codes import ACTIVATIONS as ACTIVATION_CODES
from mnistnet.codes import LOSSES as LOSS_CODES
from mnistnet.inputs import as_features, as_targets
from mnistnet.kinds import layer_from_config, layer_to_config
from mnistnet.layers import Layer, _choice, _positive_int
from mnistnet.optimizers import SGD, Optimizer, optimizer_from_config, optimizer_to_config
from mnistnet.plan import Plan, aligned_zeros, input_shape_of
from mnistnet.trainer import History, Trainer

__all__ = ["BACKENDS", "History", "Model", "loss_for_output"]

BACKENDS = {"fast": fast, "reference": reference}
ACTIVATIONS = tuple(ACTIVATION_CODES)
LOSSES = tuple(LOSS_CODES)
PREDICT_CHUNK = 256  # rows per forward pass in predict/evaluate, at most
# ... and no more than keep each thread's activations within this many bytes, so that a pass
# stays in its core's cache: the convnet's 256 rows are 48 MB (10,000 rows took 220 ms on
# 2 threads of a Zen 5, 140 ms in passes of 16 rows, which take 3 MB).
PREDICT_THREAD_BYTES = 1 << 21
# A calling thread keeps its predict block up to this size for its next call (see
# Model._predict_block).
PREDICT_KEEP_BYTES = 1 << 24


def _loss_object(loss: Any) -> losses.Loss:
    """A loss given by name (mnistnet's, LOSSES), as a mnistnet.losses object, or as its
    config (a model file's)."""
    if isinstance(loss, str):
        return losses.get(_choice(loss, LOSSES, "loss"))
    if isinstance(loss, (losses.Loss, dict)):
        return losses.get(loss)
    # a mnistnet.losses object is valid too (CategoricalCrossentropy(label_smoothing=...))
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")


def _checked_names(names: Sequence[str], n_outputs: int) -> tuple[str, ...]:
    """names as a tuple, if it names each of the n_outputs outputs with a string."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"class_names must be a sequence of strings, got "
                        f"{type(names).__name__}")
    names = tuple(names)
    if not all(isinstance(name, str) for name in names):
        raise TypeError("class_names must all be strings")
    if len(names) != n_outputs:
        raise ValueError(f"{len(names)} class_names for a model of {n_outputs} outputs: give "
                         "one name per output")
    return names


def loss_for_output(activation: str) -> str:
    """The loss a model gets when none is given, from its output layer's activation:
    categorical cross-entropy after a softmax (probabilities), MSE after anything else
    (sigmoid, linear, tanh, relu), the pairs the presets use."""
    return "categorical_crossentropy" if activation == "softmax" else "mse"


class Model(Trainer):
    """A stack of layers trained by minibatch gradient descent.

    Args:
        layers: layers of the kinds in mnistnet.kinds.KINDS (Dense, Conv2D, MaxPool2D,
            AveragePooling2D, GlobalAveragePooling2D, Flatten, Dropout, Activation,
            RandomTranslation, BatchNormalization), input side first.
        input_dim: width of each input row, for a net of Dense layers (784 for MNIST).
        input_shape: or the shape of one sample: (784,) or, channels last, (28, 28, 1).
            Neither given: MNIST's, (28, 28, 1) if the first layer is a Conv2D or
            MaxPool2D, else (784,).
        loss: "mse" or "categorical_crossentropy" (needs a softmax output layer), or a
            mnistnet.losses object such as CategoricalCrossentropy(label_smoothing=0.1);
            None (default): the output's, categorical cross-entropy after a softmax, else
            MSE (see loss_for_output).
        optimizer: SGD (default SGD(0.01)), Adam, AdamW or RMSprop.
        seed: seeds the Glorot-uniform initialisation, every epoch's shuffle and the dropout
            masks.
        backend: "fast" (compiled kernels) or "reference" (NumPy twin).
        class_names: what each output means, e.g. mn.datasets.class_names("fashion-mnist");
            default "0", "1", ... (MNIST's digits). Saved with the model; shown by predict's
            command, the pictures and the demo page.
        dataset: the name (mnistnet.datasets.NAMES) of the data it learns from, if it is
            one of them: saved with the model, and the command line's default --dataset for
            it.
    """

    def __init__(self, layers: Sequence[Layer], input_dim: int | None = None,
                 loss: str | losses.Loss | None = None, optimizer: Optimizer | None = None,
                 seed: int = 0, backend: str = "fast", input_shape: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None,
                 dataset: str | None = None) -> None:
        if isinstance(layers, Layer) or not isinstance(layers, Sequence) or not layers:
            raise TypeError("layers must be a non-empty list of layers (Dense, Conv2D, ...)")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a layer (Dense, Conv2D, MaxPool2D, "
                                f"Flatten, Dropout, ...), got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_shape = input_shape_of(self.layers, input_dim, input_shape)
        output = self.layers[-1].activation
        self.loss_object = _loss_object(loss_for_output(output) if loss is None else loss)
        self.loss = self.loss_object.name  # the kernels' name for it
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
        if self.seed >= 1 << 64:  # the dropout and translation keys take it as 64 bits
            raise ValueError(f"seed must be below 2**64, got {seed}")
        self.backend = backend

        self.plan = Plan(self.layers, self.input_shape)
        self._loss_code = LOSS_CODES[self.loss]
        self.params = aligned_zeros(self.plan.n_params)
        self.grads = aligned_zeros(self.plan.n_params)
        self.optimizer_state = aligned_zeros(optimizer.slots * self.plan.n_params)
        self._views = self.plan.weight_views(self.params)
        self._epochs_done = 0
        self.history: History | None = None  # the running or last fit's History
        self.stop_training = False  # a callback sets it to end fit after this epoch
        self.fit_batch_size: int | None = None  # the last fit's (saved: resume needs it)
        self.fit_validation_split: float | None = None  # likewise
        # Stateful callbacks' counters by callback (mnistnet.callbacks): carried across fit
        # calls and in model files, so that resuming is exact.
        self.callback_state: dict[str, dict[str, Any]] = {}
        self._training = threading.Lock()
        self._predict_blocks = threading.local()  # each calling thread's, see _predict_block
        self.class_names = class_names  # type: ignore[assignment]  (None: the default)
        self.dataset = dataset
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
    def class_names(self) -> tuple[str, ...]:
        """What each output means: the names given, else "0", "1", ... (digits)."""
        if self._class_names is None:
            return tuple(str(i) for i in range(self.n_outputs))
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        self._class_names = None if names is None else _checked_names(names, self.n_outputs)

    @property
    def class_names_given(self) -> bool:
        """Whether the model has class names of its own (given, or read from its file)."""
        return self._class_names is not None

    @property
    def reads_digits(self) -> bool:
        """Whether its classes are the digits "0", "1", ... in order (MNIST's), so that an
        output is said as "digit 7"."""
        return all(name == str(i) for i, name in enumerate(self.class_names))

    @property
    def dataset(self) -> str | None:
        """The mnistnet.datasets name of the data the model learns from, or None."""
        return self._dataset

    @dataset.setter
    def dataset(self, name: str | None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"dataset must be a dataset's name or None, got "
                            f"{type(name).__name__}")
        self._dataset = name

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
                   backend=backend, class_names=config.get("class_names"),
                   dataset=config.get("dataset"))

    def get_config(self) -> dict[str, Any]:
        """The architecture, loss, optimizer and seed as JSON-able values, and the class
        names and dataset when they were given."""
        config = {"layers": [layer_to_config(layer) for layer in self.layers],
                  "input_shape": list(self.input_shape),
                  "loss": losses.to_config(self.loss_object),
                  "optimizer": optimizer_to_config(self.optimizer), "seed": self.seed}
        if self._class_names is not None:
            config["class_names"] = list(self._class_names)
        if self._dataset is not None:
            config["dataset"] = self._dataset
        return config

    def _training_state(self) -> dict[str, Any]:
        """What training depends on beyond the architecture: weights, optimizer state and
        step count, epochs done (the next shuffle and dropout keys)."""
        return {"params": self.params.copy(), "optimizer_state": self.optimizer_state.copy(),
                "iterations": self.optimizer.iterations, "epochs_done": self._epochs_done,
                "ema_swapped": self._ema_swapped}

    def _restore_training_state(self, state: dict[str, Any]) -> None:
        self.params[...] = state["params"]
        self.optimizer_state[...] = state["optimizer_state"]
        self.optimizer.iterations = int(state["iterations"])
        self._epochs_done = int(state["epochs_done"])
        self._ema_swapped = bool(state.get("ema_swapped", False))

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

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print a table of the layers with their output shapes and weight counts, then the
        input, the weight count, the loss and the optimizer; returns None, as Keras' does.

        Args:
            print_fn: called with each line instead of print (Keras' argument), e.g.
                ``lines.append`` to keep the text.
        """
        rows = [("layer", "output shape", "params")]
        for d in self.plan.describe():
            rows.append((f"{d['class']}", str(tuple(d["output_shape"])), str(d["params"])))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(f"input {self.input_shape}; {self.plan.n_params:,} weights; loss "
                     f"{self._describe_loss()}; {self.optimizer!r}")
        for line in lines:
            (print_fn or print)(line)

    def _describe_loss(self) -> str:
        """The loss and how it relates to the output layer, e.g. "categorical_crossentropy
        (the default for a softmax output)"."""
        output = self.layers[-1].activation
        default = loss_for_output(output)
        smoothing = getattr(self.loss_object, "label_smoothing", 0)
        name = self.loss + (f" with label_smoothing={smoothing:g}" if smoothing else "")
        if self.loss == default:
            return f"{name} (the default for a {output} output)"
        return f"{name} (given; a {output} output's default is {default})"

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
        self._ema_keep_average()  # training starts from these, the average goes on
        for new, old in zip(converted, expected, strict=True):
            old[...] = new

    # -- training --------------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
        """Outputs (n, outputs) float32 for x, samples of input_shape or flattened (dropout
        is off); uint8 pixels as they are when the first layer is Rescaling. Safe to call
        from several threads at once (each call has its own scratch buffers)."""
        return self._predict_array(self._features(x),
                                   _positive_int(batch_size, "batch_size"))

    def _features(self, x: Any, name: str = "x", check_finite: bool = True) -> np.ndarray:
        """x as the kernels read it (mnistnet.inputs.as_features): float32 rows, or uint8
        pixels as they are when the first layer is Rescaling."""
        return as_features(x, self.input_shape, name, check_finite,
                           pixels=self.plan.takes_pixels)

    def _predict_array(self, x: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
        """predict for x already through as_features (fit's validation data, every epoch)."""
        out = np.empty((x.shape[0], self.n_outputs), dtype=np.float32)
        if x.shape[0] == 0:
            return out
        chunk = self._predict_rows(batch_size, x.shape[0])
        acts = self._predict_block(chunk * self.plan.acts_per_row)
        return self._kernels.predict(self.plan, self.params, acts, x, out, chunk)

    def _predict_block(self, floats: int) -> np.ndarray:
        """The calling thread's scratch block of `floats` for predict's activations, kept
        for its next call unless above PREDICT_KEEP_BYTES: a new block at every call, mapped
        and zeroed by the system, took 10-15 us of the convnet's 40-55 us for one image."""
        block = getattr(self._predict_blocks, "acts", None)
        if block is None or block.size < floats:
            block = np.empty(floats, dtype=np.float32)
            if block.nbytes <= PREDICT_KEEP_BYTES:
                self._predict_blocks.acts = block
        return block[:floats]

    def _predict_rows(self, batch_size: int, n: int) -> int:
        """Rows per forward pass: at most batch_size (and n), and no more than keep each
        thread's activations within PREDICT_THREAD_BYTES, but two a thread at least, so that
        the threads share each pass."""
        threads = fast.get_num_threads() if self._kernels is fast else 1
        fit = PREDICT_THREAD_BYTES // (self.plan.acts_per_row * np.dtype(np.float32).itemsize)
        return max(1, min(batch_size, n, max(fit, 2) * threads))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """{"loss": mean loss over the rows, "accuracy": fraction with the right argmax}.
        x as predict takes it."""
        x = self._features(x)
        targets = as_targets(y, x.shape[0], self.n_outputs)
        if x.shape[0] == 0:
            raise ValueError("x has no rows")
        return self._evaluate_arrays(x, targets)

    def _evaluate_arrays(self, x, targets) -> dict[str, float]:
        pred = self._predict_array(x)
        k = self._kernels
        smoothed = self._loss_targets(targets)
        loss = (k.crossentropy_forward(pred, smoothed) if self.loss == "categorical_crossentropy"
                else k.mse_forward(pred, smoothed))
        loss += reference.l2_penalty(self.plan, self.params)  # Keras reports it in the loss
        return {"loss": float(loss), "accuracy": k.count_correct(pred, targets) / x.shape[0]}

    def _loss_targets(self, targets: np.ndarray) -> np.ndarray:
        """The targets the loss compares with: smoothed with the loss's label_smoothing."""
        return losses.smooth_targets(targets, getattr(self.loss_object, "label_smoothing", 0))

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture, weights, optimizer state and training position to an .npz
        file, atomically (a temporary file in the same folder, then a rename): a crash never
        leaves a half-written model. See mnistnet.saving."""
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
        _choice(backend, tuple(BACKENDS), "backend")
        return saving.load_model(path, backend, cls)
