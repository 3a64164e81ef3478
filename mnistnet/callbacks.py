"""Callbacks: code that `Model.fit` runs between epochs, with Keras 3's names, arguments and
`logs` keys.

    model.fit(x, y, epochs=30, validation_split=0.1, callbacks=[
        mn.callbacks.EarlyStopping(patience=3, restore_best_weights=True),
        mn.callbacks.ModelCheckpoint("best.npz", save_best_only=True)])

Each epoch runs in one native call, so callbacks see epochs, never batches: `on_train_begin`,
`on_epoch_begin`, `on_epoch_end` and `on_train_end` are called (batch hooks are not). `logs`
holds "loss" and "accuracy", and "val_loss" and "val_accuracy" with validation data. The
`epoch` a callback receives counts the model's epochs (0 for its first ever), so a model that
resumes from a file goes on counting where it stopped, as Keras does with `initial_epoch`.

An exception raised by a callback reaches the caller of `fit`; the model then holds the last
completed epoch.

EarlyStopping and ReduceLROnPlateau keep their counters (wait, best, ReduceLROnPlateau's
cooldown, EarlyStopping's best weights) on the model, in `model.callback_state`, after every
epoch: a later fit, or a model saved and loaded (model files hold that state), goes on
counting where they were, so that 5 epochs, then 5 more, stop and restore as 10 straight do.
(Keras resets them at each fit: mnistnet's fit continues the model's training, epochs
included.) Clear `model.callback_state` to count afresh. ModelCheckpoint writes once every
callback has ended the epoch (after_epoch_end), so its file holds that state too.
"""

from __future__ import annotations

import csv
import math
import os
import string
import tempfile
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mnistnet.model import Model

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
]


class Callback:
    """Base class: override the hooks you need. `model` is the model being trained and
    `params` {"epochs", "steps", "verbose", "metrics"} (epochs: the model's epoch count when
    this fit ends, as Keras' epochs with initial_epoch; metrics: the keys `logs` will have at
    the end of an epoch)."""

    def __init__(self) -> None:
        self.model: Model | None = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Model) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        """Before the first epoch of a fit call."""

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        """After the last epoch of a fit call (not when an exception ends it)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Before epoch `epoch` (the model's count, from 0)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """After epoch `epoch`; logs holds its metrics (callbacks may add keys, as
        "learning_rate")."""

    def after_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """After every callback's on_epoch_end for epoch `epoch` (not a Keras hook): the
        model, its learning rate and the callbacks' state are then what the next epoch
        starts from. ModelCheckpoint writes here."""

    # -- state kept on the model across fit calls and in model files ------------------------
    @property
    def state_key(self) -> str | None:
        """Under which key of model.callback_state this callback keeps its state; None (the
        default): it keeps none."""
        return None

    def get_state(self) -> dict[str, Any]:
        """The state to keep: JSON values, and float32 arrays of the parameters' size."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take up a state get_state returned (checked by check_state when read from a
        file)."""


class CallbackList:
    """The callbacks of one fit call, called in order."""

    def __init__(self, callbacks: Sequence[Callback] | None, model: Model,
                 params: dict[str, Any]) -> None:
        if callbacks is None:
            callbacks = []
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise TypeError("callbacks must be a list of mnistnet.callbacks.Callback, got "
                            f"{type(callbacks).__name__}")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] must be a mnistnet.callbacks.Callback, got "
                                f"{type(cb).__name__}")
        self.callbacks = list(callbacks)
        self.model = model
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)
        self.model.callback_state.update(
            {cb.state_key: cb.get_state() for cb in self.callbacks if cb.state_key})
        for cb in self.callbacks:
            cb.after_epoch_end(epoch, logs)


# ---- monitoring a metric ------------------------------------------------------------------

def _mode(mode: str, monitor: str) -> str:
    """"min" or "max" for Keras' mode argument; "auto" maximises accuracies."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _non_negative(value: Any, name: str, integer: bool = False) -> Any:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got "
                        f"{type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value) if integer else float(value)


def _check_monitor(monitor: str, params: dict[str, Any], who: str) -> None:
    """A clear error before the first epoch when `monitor` is not a key the logs will have."""
    metrics = params.get("metrics")
    if metrics is not None and monitor not in metrics:
        hint = (" (val_ keys need validation_data or validation_split)"
                if monitor.startswith("val_") else "")
        raise ValueError(f"{who}: monitor {monitor!r} is not a key of the logs; they hold "
                         f"{', '.join(metrics)}{hint}")


def _monitored(logs: dict[str, float], monitor: str, who: str) -> float:
    if monitor not in logs:
        raise ValueError(f"{who}: monitor {monitor!r} is not a key of the logs; they hold "
                         f"{', '.join(logs)}")
    return float(logs[monitor])


# ---- state kept on the model ----------------------------------------------------------------

def _resume(callback: Callback) -> None:
    """Take up the state the model keeps for callback (from an earlier fit or a model
    file), if it was kept in the same mode (min or max: the best value means nothing in
    the other)."""
    state = callback.model.callback_state.get(callback.state_key)
    if state is not None and state.get("mode") == callback.mode:
        callback.set_state(state)


def _is_mode(value: Any) -> bool:
    return value in ("min", "max")


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_number_or_none(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and math.isfinite(value))


def _check_fields(state: Any, required: dict[str, Callable[[Any], bool]],
                  optional: Collection[str] = ()) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"a state must be an object, got {type(state).__name__}")
    missing = set(required) - set(state)
    unknown = set(state) - set(required) - set(optional)
    if missing or unknown:
        raise ValueError(f"the fields are {sorted(state)}, expected {sorted(required)}"
                         f"{f' and maybe {sorted(optional)}' if optional else ''}")
    for name, valid in required.items():
        if not valid(state[name]):
            raise ValueError(f"{name} is {state[name]!r}")


def _check_weights(value: Any, n_params: int, name: str) -> None:
    if (not isinstance(value, np.ndarray) or value.dtype != np.float32
            or value.shape != (n_params,)):
        raise ValueError(f"{name} must be float32 ({n_params},), got "
                         f"{getattr(value, 'dtype', type(value).__name__)} "
                         f"{getattr(value, 'shape', '')}")
    if not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or Inf")


def check_state(key: Any, state: Any, n_params: int) -> bool:
    """Whether model.callback_state[key] = state is a state this version keeps (False: a
    key of no stateful callback here, to be ignored); ValueError naming the key if the state
    is malformed. n_params: the model's parameter count (the size of weight arrays)."""
    stateful = {"EarlyStopping": EarlyStopping, "ReduceLROnPlateau": ReduceLROnPlateau}
    name = key.split(":", 1)[0] if isinstance(key, str) and ":" in key else None
    if name not in stateful:
        return False
    try:
        stateful[name].check_state(state, n_params)
    except ValueError as exc:
        raise ValueError(f"callback state {key!r}: {exc}") from None
    return True


class EarlyStopping(Callback):
    """Stop training when a monitored metric has stopped improving (Keras 3's rule).

    After each epoch (from start_from_epoch on), the metric improves when it beats the best
    so far by more than min_delta; after `patience` epochs without improvement, training
    stops. With restore_best_weights, the model ends fit with the weights of the best epoch
    (the last epoch's if none improved on the first).

    Args:
        monitor: a key of the logs ("val_loss", "val_accuracy", "loss", "accuracy").
        min_delta: the least change that counts as an improvement (>= 0).
        patience: epochs without improvement before stopping (>= 0).
        verbose: 1 prints when it stops and restores.
        mode: "min", "max" or "auto" (accuracies are maximised, the rest minimised).
        baseline: training stops unless the metric beats this within patience epochs.
        restore_best_weights: end with the best epoch's weights.
        start_from_epoch: epochs to wait before watching.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0) -> None:
        super().__init__()
        self.monitor = str(monitor)
        self.min_delta = abs(_non_negative(min_delta, "min_delta"))
        self.patience = _non_negative(patience, "patience", integer=True)
        self.verbose = verbose
        self.mode = _mode(mode, self.monitor)
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _non_negative(start_from_epoch, "start_from_epoch",
                                              integer=True)
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.best_epoch = 0

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        _check_monitor(self.monitor, self.params, "EarlyStopping")
        self._reset()
        _resume(self)

    @property
    def state_key(self) -> str:
        return f"EarlyStopping:{self.monitor}"

    def get_state(self) -> dict[str, Any]:
        state = {"mode": self.mode, "wait": self.wait, "best": self.best,
                 "best_epoch": self.best_epoch}
        if self.best_weights is not None:  # one flat float32 array, the parameters' layout
            flat = np.empty(self.model.plan.n_params, np.float32)
            for view, weights in zip(self.model.plan.weight_views(flat), self.best_weights,
                                     strict=True):
                view[...] = weights
            state["best_weights"] = flat
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]
        if self.restore_best_weights and "best_weights" in state:
            self.best_weights = self.model.plan.weight_views(state["best_weights"].copy())

    @staticmethod
    def check_state(state: dict[str, Any], n_params: int) -> None:
        """ValueError unless state is one get_state could have returned."""
        _check_fields(state, {"mode": _is_mode, "wait": _is_count, "best": _is_number_or_none,
                              "best_epoch": _is_count}, {"best_weights"})
        if "best_weights" in state:
            _check_weights(state["best_weights"], n_params, "best_weights")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch < self.start_from_epoch:
            return
        current = _monitored(logs or {}, self.monitor, "EarlyStopping")
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()  # so far, the best there is
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


# ---- file names ---------------------------------------------------------------------------

_CONVERSIONS = (None, "r", "s", "a")


def check_name_fields(name: str, what: str) -> None:
    """Refuse a file name whose format fields no epoch and logs can fill: unbalanced braces,
    positional fields ("{}", "{0}"), attributes or indexes ("{epoch.x}", "{epoch[0]}"),
    nested fields in a format spec, unknown conversions. One ValueError, "<what> '<name>'
    ...": what names the argument ("ModelCheckpoint: filepath")."""
    try:
        fields = [(field, spec, conversion)
                  for _, field, spec, conversion in string.Formatter().parse(name)
                  if field is not None]
    except ValueError as exc:
        raise ValueError(f"{what} {name!r} is not a valid format string "
                         f"({exc}); write a literal brace twice: {{{{ or }}}}") from None
    for field, spec, conversion in fields:
        if not field.isidentifier() or "{" in spec or conversion not in _CONVERSIONS:
            raise ValueError(f"{what} {name!r} has the field "
                             f"{{{field}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}}; a field is {{epoch}} or a logs "
                             "key such as {val_loss}, optionally with a format spec "
                             "({epoch:03d}, {val_loss:.4f}), and nothing else")


def fill_file_name(name: str, epoch: int, logs: dict[str, float], what: str) -> str:
    """name with {epoch} (from 1) and the logs' keys filled in; one ValueError naming what
    (as check_name_fields), the name and the keys there are when it cannot be (an unknown
    key, a format spec that does not fit the value)."""
    try:
        return name.format(epoch=epoch, **logs)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        keys = ", ".join(["epoch", *logs])
        raise ValueError(f"{what} {name!r} cannot be filled from the "
                         f"epoch and the logs' keys ({keys}): {type(exc).__name__}: {exc}"
                         ) from None


def check_writable_folder(path: str, who: str) -> None:
    """Fail now, not at the first write, if path's folder is missing or cannot be written
    (found by writing there: access() says yes to root, and file systems may be read-only);
    or if path is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{who}: {path} is a folder; name a file")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{who}: folder {folder} does not exist (for {path})")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError(f"{who}: folder {folder} cannot be written ({exc.strerror or exc})"
                              f" (for {path})") from None


class ModelCheckpoint(Callback):
    """Save the model (Model.save: weights, optimizer state and training position, written
    atomically) after each epoch, or only when the monitored metric improves.

    Args:
        filepath: where to write; "{epoch}" (from 1) and any logs key with a format spec,
            "{val_loss:.4f}", are filled in (str.format). A name with other fields
            ("{epoch.x}", "{epoch[0]}", "{}") is refused here; one whose keys the logs
            will not have, or whose folder is missing or not writable, before the first
            epoch.
        monitor: the logs key that save_best_only compares.
        verbose: 1 prints each save.
        save_best_only: write only when the metric beats the best so far.
        mode: "min", "max" or "auto".
        initial_value_threshold: the value to beat first (save_best_only).
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss",
                 verbose: int = 0, save_best_only: bool = False, mode: str = "auto",
                 initial_value_threshold: float | None = None) -> None:
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath:
            raise ValueError("filepath must not be empty")
        check_name_fields(self.filepath, "ModelCheckpoint: filepath")
        self.monitor = str(monitor)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.mode = _mode(mode, self.monitor)
        self.initial_value_threshold = initial_value_threshold
        self.best = self._initial_best()
        self.last_saved: str | None = None  # the path of the latest write
        self._write = False  # whether this epoch's file is to be written

    def _initial_best(self) -> float:
        if self.initial_value_threshold is not None:
            return float(self.initial_value_threshold)
        return math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self.save_best_only:
            _check_monitor(self.monitor, self.params, "ModelCheckpoint")
        # A misspelt key or a missing folder fails here, before any epoch, not after one.
        sample = {key: 0.0 for key in self.params.get("metrics", ())}
        check_writable_folder(fill_file_name(self.filepath, 1, sample,
                                             "ModelCheckpoint: filepath"), "ModelCheckpoint")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._write = not self.save_best_only
        if self.save_best_only:
            current = _monitored(logs or {}, self.monitor, "ModelCheckpoint")
            better = current < self.best if self.mode == "min" else current > self.best
            if better:
                self.best, self._write = current, True

    def after_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        # Written once every callback has ended the epoch: the file then holds the rate
        # and the callbacks' state the next epoch starts from (an exact resume).
        if not self._write:
            return
        path = fill_file_name(self.filepath, epoch + 1, logs or {}, "ModelCheckpoint: filepath")
        self.model.save(path)
        self.last_saved = path
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: saved the model to {path}")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when a metric has stopped improving for
    `patience` epochs (Keras 3's rule); the optimizer's learning rate must be a number, not
    a schedule. As in Keras the rate is held in float32: with min_lr=0 (the default) it
    may end at float32's subnormal numbers, then at 0, and training carries on.

    Args:
        monitor: the logs key to watch.
        factor: in (0, 1): new_lr = max(lr * factor, min_lr), rounded to float32.
        patience: epochs without improvement before a reduction.
        verbose: 1 prints each reduction.
        mode: "min", "max" or "auto".
        min_delta: the least change that counts as an improvement.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: the lowest learning rate.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0) -> None:
        super().__init__()
        self.monitor = str(monitor)
        self.factor = _non_negative(factor, "factor")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        self.patience = _non_negative(patience, "patience", integer=True)
        self.verbose = verbose
        self.mode = _mode(mode, self.monitor)
        self.min_delta = _non_negative(min_delta, "min_delta")
        self.cooldown = _non_negative(cooldown, "cooldown", integer=True)
        self.min_lr = _non_negative(min_lr, "min_lr")
        if self.min_lr > np.finfo(np.float32).max:  # Keras compares it as float32
            raise ValueError(f"min_lr must be at most {np.finfo(np.float32).max:.3g} "
                             f"(float32), got {min_lr}")
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        _check_monitor(self.monitor, self.params, "ReduceLROnPlateau")
        _numeric_rate(self.model, "ReduceLROnPlateau")
        self._reset()
        _resume(self)

    @property
    def state_key(self) -> str:
        return f"ReduceLROnPlateau:{self.monitor}"

    def get_state(self) -> dict[str, Any]:
        return {"mode": self.mode, "best": self.best if math.isfinite(self.best) else None,
                "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["best"] is not None:  # None: nothing seen yet (the reset's infinity)
            self.best = state["best"]
        self.wait, self.cooldown_counter = state["wait"], state["cooldown_counter"]

    @staticmethod
    def check_state(state: dict[str, Any], n_params: int) -> None:
        """ValueError unless state is one get_state could have returned."""
        _check_fields(state, {"mode": _is_mode, "best": _is_number_or_none,
                              "wait": _is_count, "cooldown_counter": _is_count})

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                self._reduce(optimizer, epoch)

    def _reduce(self, optimizer: Any, epoch: int) -> None:
        """Keras 3's reduction: the float32 rate times factor, not below min_lr, held as
        float32. With min_lr=0 the rate goes down through float32's subnormal numbers to 0,
        and training carries on (at 0 nothing moves); it stops being reduced there."""
        old = float(np.float32(optimizer.learning_rate))
        if old > np.float32(self.min_lr):
            new = max(old * self.factor, self.min_lr)
            optimizer.set_float32_rate(new)
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                      f"{new}.")
            self.cooldown_counter = self.cooldown
            self.wait = 0


class LearningRateScheduler(Callback):
    """Set the learning rate before each epoch to schedule(epoch, lr) (Keras 3): `epoch`
    counts the model's epochs from 0 and lr is the current rate. For a rate that changes at
    every step, give the optimizer a schedule from mnistnet.schedules instead.

    Args:
        schedule: a function (epoch: int, lr: float) -> float > 0.
        verbose: 1 prints each new rate.
    """

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (epoch, lr) -> lr, got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        _numeric_rate(self.model, "LearningRateScheduler")

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        optimizer = self.model.optimizer
        rate = self.schedule(epoch, float(optimizer.learning_rate))
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)):
            raise TypeError(f"LearningRateScheduler: schedule({epoch}, lr) returned "
                            f"{type(rate).__name__}, not a number")
        _set_rate(optimizer, float(rate))
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{float(rate)}.")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


def _numeric_rate(model: Model, who: str) -> None:
    from mnistnet.schedules import LearningRateSchedule

    if isinstance(model.optimizer.learning_rate, LearningRateSchedule):
        raise ValueError(f"{who} sets the learning rate, but the optimizer's is a schedule "
                         f"({type(model.optimizer.learning_rate).__name__}); use one or the "
                         "other")


def _set_rate(optimizer: Any, rate: float) -> None:
    from mnistnet.optimizers import _learning_rate

    optimizer.learning_rate = _learning_rate(rate)  # the optimizer's own checks


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file: a header "epoch" and the logs' keys
    (sorted), then one row per epoch (epoch from 0, as Keras). Each row is appended and the
    file closed, so it is complete after every epoch, whatever happens next. Appending to a
    file keeps its columns ("NA" where a log lacks one).

    Args:
        filename: the CSV file.
        separator: the field separator.
        append: add to an existing file (no second header) instead of overwriting it.
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",",
                 append: bool = False) -> None:
        super().__init__()
        self.filename = os.fspath(filename)
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.sep = separator
        self.append = bool(append)
        self.keys: list[str] | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.keys = None
        self._header_written = self.append and os.path.exists(self.filename) and (
            os.path.getsize(self.filename) > 0)
        if self._header_written:  # the file's columns, so appended rows line up with them
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f, delimiter=self.sep), [])
            self.keys = header[1:] if header[:1] == ["epoch"] else None
        # Truncated (or, appending, created) now: a failure to write shows before the first
        # epoch, as when Keras opens the file in on_train_begin.
        with open(self.filename, "a" if self.append else "w", newline=""):
            pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        with open(self.filename, "a", newline="") as f:
            writer = csv.writer(f, delimiter=self.sep)
            if not self._header_written:
                writer.writerow(["epoch", *self.keys])
                self._header_written = True
            writer.writerow([epoch, *(logs.get(key, "NA") for key in self.keys)])
