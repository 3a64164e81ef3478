"""The fit loop, as Keras' trainer: epochs, the progress log, callbacks, validation.

Model (mnistnet.model) inherits Trainer: fit checks its arguments, then runs each epoch as
one call of the backend's native epoch (train_epoch, over the model's buffers), validates,
logs and calls back between epochs. The shuffle order comes from one place (shuffle_order),
so both backends see the same batches.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistnet import fast
from mnistnet.callbacks import Callback, CallbackList
from mnistnet.codes import EPOCH_DONE, EPOCH_NONFINITE_INPUT, EPOCH_NONFINITE_LOSS
from mnistnet.inputs import as_targets
from mnistnet.layers import _positive_int
from mnistnet.plan import aligned_zeros

__all__ = ["History", "Trainer", "format_epoch_line", "shuffle_order"]


class History:
    """What fit returns: `history[name]` lists one value per completed epoch, under Keras'
    names: loss, accuracy, and val_loss, val_accuracy when there is validation data;
    `epoch` lists each epoch's index in the model's count (0 for its first ever), as Keras'
    History does when fit starts at initial_epoch: a model trained for 2 epochs, then fit
    again for 1, has epoch == [2] in the second History."""

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


# ---- validation ---------------------------------------------------------------------------

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


class _EpochState:
    """A model's training state at the start of an epoch (weights, gradients, optimizer
    state and step, epochs done, learning rate), in buffers made once per fit: what fit
    puts back when an epoch finds NaN or Inf in x, so that the model is as its last
    completed epoch left it, and as the files callbacks wrote after that epoch say."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.params = np.empty_like(model.params)
        self.grads = np.empty_like(model.grads)
        self.optimizer_state = np.empty_like(model.optimizer_state)

    def take(self) -> None:
        m = self.model
        np.copyto(self.params, m.params)
        np.copyto(self.grads, m.grads)
        np.copyto(self.optimizer_state, m.optimizer_state)
        # A callback may set the rate in on_epoch_begin (LearningRateScheduler).
        self.scalars = (m.optimizer.iterations, m._epochs_done, m.optimizer.learning_rate)

    def restore(self) -> None:
        m = self.model
        np.copyto(m.params, self.params)
        np.copyto(m.grads, self.grads)
        np.copyto(m.optimizer_state, self.optimizer_state)
        m.optimizer.iterations, m._epochs_done, rate = self.scalars
        m.optimizer._learning_rate = rate  # as it was: already checked


class Trainer:
    """fit, for Model (its buffers, kernels and optimizer are the model's)."""

    _training: threading.Lock
    # With the optimizer's use_ema: True while the weights hold the moving average (from
    # the end of a fit) and the optimizer state's average block the weights training reached.
    _ema_swapped: bool = False

    # -- the weights' moving average (use_ema) ----------------------------------------------
    def _ema_block(self) -> np.ndarray:
        """The optimizer state's block of the weights' moving average."""
        n = self.plan.n_params
        at = int(self.optimizer.kernel_settings()["ema_slot"]) * n
        return self.optimizer_state[at: at + n]

    def _swap_ema(self) -> None:
        """Swap the trainable weights with their moving average (Keras' fit ends by writing
        the average into the weights; the weights reached are kept in its place)."""
        mask = self.plan.trainable()
        block = self._ema_block()
        reached = self.params[mask]
        self.params[mask] = block[mask]
        block[mask] = reached
        self._ema_swapped = not self._ema_swapped

    def _ema_keep_average(self) -> None:
        """Before the weights are written from outside (set_weights, load): if they hold the
        average, it stays the average (Keras keeps its EMA variables) and training will
        start from whatever is written."""
        if self._ema_swapped:
            mask = self.plan.trainable()
            self._ema_block()[mask] = self.params[mask]
            self._ema_swapped = False

    def _averaged_weights(self) -> Any:
        """A context in which the weights are their moving average (callbacks.SwapEMAWeights,
        the bench's time to accuracy): nothing to do without use_ema, before the first step
        (the average is the weights) or when fit has already put the average in."""
        return _AveragedWeights(self)

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None, verbose: int = 1,
            shuffle: bool = True, callbacks: Sequence[Callback] | None = None,
            validation_split: float = 0.0) -> History:
        """Train for `epochs` epochs of minibatch gradient descent; returns a History.

        x: float samples of input_shape (or flattened); float64 is converted to float32 once.
        For a model whose first layer is Rescaling, uint8 pixels as they are: each batch's
        rows become floats as the epoch gathers them (the model never holds a float copy).
        y: integer labels (n,) or one-hot (n, outputs). Each epoch's row order comes from the
        model's seed and the number of epochs trained so far (shuffle_order), the same for
        both backends, and so do the dropout masks. The epoch runs in compiled code without
        the GIL (fast backend). Ctrl-C stops between two steps with KeyboardInterrupt; the
        model keeps the last completed step. A NaN/Inf loss stops training with a
        RuntimeWarning, before that batch's update. NaN or Inf in x is a ValueError: the
        epoch checks each batch's rows as it reads them (one pass over x fewer than a check
        up front), and the model goes back to the end of the last completed epoch, as it was
        before fit if none was (x changed during fit: a callback wrote into it). What
        callbacks wrote (checkpoints, CSV rows) is about completed epochs only, so it stays
        true of the model.

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
        x = self._features(x, check_finite=epochs == 0)
        targets = as_targets(y, x.shape[0], self.n_outputs)
        if x.shape[0] == 0:
            raise ValueError("x has no rows")
        names = ("validation_data[0]", "validation_data[1]")
        if split:
            x, targets, validation_data = _split_off(x, targets, split)
            names = (f"x's last {split} (validation_split)", f"y's last {split}")
        val = self._validation_arrays(validation_data, names)
        targets = self._loss_targets(targets)  # label smoothing (val's: in _evaluate_arrays)
        batch_size = min(batch_size, x.shape[0])
        metrics = ["loss", "accuracy"] + (["val_loss", "val_accuracy"] if val else [])
        # "epochs": where this fit will end in the model's count (Keras' epochs argument, with
        # initial_epoch the epochs already trained).
        hooks = CallbackList(callbacks, self, {
            "epochs": self._epochs_done + epochs, "steps": -(-x.shape[0] // batch_size),
            "verbose": verbose, "metrics": metrics})
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
        xv = self._features(validation_data[0], names[0])
        if xv.shape[0] == 0:
            raise ValueError(f"{names[0]} has no rows")
        yv = as_targets(validation_data[1], xv.shape[0], self.n_outputs, names[1])
        return xv, yv

    def _training_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The activation and activation-gradient blocks for training `rows` at a time,
        cache-aligned, the latter with workspace for the compiled epoch's threads."""
        threads = fast.get_num_threads() if self.backend == "fast" else 1
        # The compiled epoch runs plan.engine (the layers after a leading Rescaling).
        _, n_acts, n_dacts = self.plan.engine.buffer_sizes(rows, threads)
        return aligned_zeros(n_acts), aligned_zeros(n_dacts)

    def _epoch_arguments(self, acts, dacts, x, targets, order, batch_size, first_step,
                         rates=None):
        """train_epoch's arguments for the batches of `order`, the first being step
        first_step of the epoch, at the learning rates `rates` (one per batch; default: the
        optimizer's from its step on)."""
        if rates is None:
            rates = self.optimizer.rates(self.optimizer.iterations, -(-len(order) // batch_size))
        return (self.plan, self.params, self.grads, self.optimizer_state, acts, dacts,
                self._loss_code, x, targets, order, batch_size,
                self.optimizer.kernel_settings(), rates, self.optimizer.iterations,
                (self.seed, self._epochs_done, first_step))

    def _fit(self, x, targets, epochs, batch_size, val, log, shuffle, hooks) -> History:
        if self._ema_swapped:
            self._swap_ema()  # train on from the weights the last fit reached
        return self._epochs(x, targets, epochs, batch_size, val, log, shuffle, hooks)

    def _epochs(self, x, targets, epochs, batch_size, val, log, shuffle, hooks) -> History:
        previous = self.history  # model.history again if no epoch of this fit completes
        # Kept on the model as it grows, so after Ctrl-C `model.history` holds the
        # completed epochs (as in Keras).
        history = self.history = History()
        # What a ValueError for NaN/Inf in x puts back: the last completed epoch.
        completed = _EpochState(self)
        acts, dacts = self._training_buffers(batch_size)
        self.fit_batch_size = batch_size
        n = x.shape[0]
        steps = -(-n // batch_size)
        self.stop_training = False
        # Epochs are numbered in the model's count, as Keras numbers them from initial_epoch:
        # resuming a model of 1 epoch for 1 more logs "Epoch 2/2".
        last = self._epochs_done + epochs
        hooks.on_train_begin()
        for _ in range(epochs):
            if self.stop_training:
                break
            completed.take()
            hooks.on_epoch_begin(self._epochs_done)
            log.epoch_start(self._epochs_done + 1, last)
            order = (shuffle_order(self.seed, self._epochs_done, n) if shuffle
                     else np.arange(n, dtype=np.int64))
            start = time.perf_counter()
            totals = [0.0, 0, 0, 0]  # loss_sum, correct, seen, batches
            status = EPOCH_DONE
            # Every rate the epoch will read, checked as float32 before its first step.
            rates = self.optimizer.rates(self.optimizer.iterations, steps)
            # On a terminal the step counter moves: run the epoch in a few compiled segments.
            segments = 20 if log.live else 1
            seg_steps = -(-steps // segments)
            for first in range(0, steps, seg_steps):
                rows = order[first * batch_size: (first + seg_steps) * batch_size]
                result = self._kernels.train_epoch(*self._epoch_arguments(
                    acts, dacts, x, targets, rows, batch_size, first,
                    rates[first: first + seg_steps]))
                self.optimizer.iterations += result[3]
                for i in range(4):
                    totals[i] += result[i]
                status = result[4]
                if status != EPOCH_DONE:
                    break
                log.update(totals[3], steps, time.perf_counter() - start,
                           self._train_logs(totals))
            if status == EPOCH_NONFINITE_INPUT or (
                    status == EPOCH_NONFINITE_LOSS and x.dtype.kind == "f"
                    and not self._kernels.all_finite(x)):  # rows the epoch did not reach
                completed.restore()
                if not history.epoch:
                    self.history = previous
                    raise ValueError("x contains NaN or Inf")
                raise ValueError(f"x contains NaN or Inf (found in epoch {self._epochs_done + 1}"
                                 f"; the model is back at the end of epoch "
                                 f"{self._epochs_done}, the last completed one)")
            if status == EPOCH_NONFINITE_LOSS:
                warnings.warn(f"loss became NaN or Inf at epoch {self._epochs_done + 1}, batch "
                              f"{totals[3] + 1}; training stopped (the weights are finite: "
                              f"that batch's update was not applied, or where it would "
                              f"have overflowed float32, not to those weights)",
                              RuntimeWarning, stacklevel=3)
                break
            self._epochs_done += 1
            logs = self._train_logs(totals)
            if val is not None:
                scores = self._validation_scores(val, hooks)
                logs["val_loss"] = scores["loss"]
                logs["val_accuracy"] = scores["accuracy"]
            log.epoch_end(steps, time.perf_counter() - start, logs)
            hooks.on_epoch_end(self._epochs_done - 1, logs)
            history.append(self._epochs_done - 1, logs)
        if self.optimizer.use_ema and epochs > 0 and self.optimizer.iterations > 0:
            self._swap_ema()  # as Keras' fit ends: the average into the weights, then callbacks
        hooks.on_train_end()
        return history

    def _validation_scores(self, val, hooks: CallbackList) -> dict[str, float]:
        """The validation arrays scored: on the weights' moving average if a callback asks
        for it (callbacks.SwapEMAWeights), else on the weights being trained (Keras')."""
        if any(getattr(c, "swaps_ema_weights", False) for c in hooks.callbacks):
            with self._averaged_weights():
                return self._evaluate_arrays(*val)
        return self._evaluate_arrays(*val)

    @staticmethod
    def _train_logs(totals) -> dict[str, float]:
        loss_sum, correct, seen, _ = totals
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    # -- inference -------------------------------------------------------------------------


class _AveragedWeights:
    """Trainer._averaged_weights' context."""

    def __init__(self, model: Trainer) -> None:
        self.model = model
        self.swapped = False

    def __enter__(self) -> None:
        m = self.model
        if m.optimizer.use_ema and m.optimizer.iterations > 0 and not m._ema_swapped:
            m._swap_ema()
            self.swapped = True

    def __exit__(self, *exc: Any) -> None:
        if self.swapped:
            self.model._swap_ema()
