"""Learning-rate schedules (Keras 3's names, arguments and formulas), applied per step.

An optimizer takes a schedule in place of a number: `mn.Adam(mn.schedules.CosineDecay(1e-3,
10_000))`. The schedule is a function of the optimizer's step (its `iterations`, counted from
0 at the first step). Before each epoch the model fills a float32 array with the rate of every
step of the epoch (`rates(first_step, steps)`), and the epoch, in either backend, reads it step
by step: no Python runs between two steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _rate(value: Any, name: str, zero: bool = False) -> float:
    """A learning rate given to a schedule: a finite number > 0 (>= 0 if zero), which
    float32 holds (the kernels compute in float32: 1e39 would be Inf there)."""
    value = _non_negative(value, name) if zero else _positive(value, name)
    if value > FLOAT32_MAX:
        raise ValueError(f"{name} must be at most {FLOAT32_MAX:.3g} (float32, which the "
                         f"kernels compute in), got {value}")
    return value


def _positive(value: Any, name: str, integer: bool = False) -> float:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got "
                        f"{type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return int(value) if integer else float(value)


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def float32_rates(rates: np.ndarray, first_step: int, source: str) -> np.ndarray:
    """rates (float64, of steps first_step, first_step + 1, ...) as the float32 array the
    epoch reads; ValueError naming source and the first step whose rate is not a finite
    number >= 0 in float32. 0 is allowed (CosineDecay ends there, as in Keras): such steps
    move nothing; so are rates that round to 0 in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = rates.astype(np.float32)
    good = np.isfinite(single) & (rates >= 0)  # NaN fails both
    if not good.all():
        bad = int(np.argmin(good))
        raise ValueError(f"{source} gives the learning rate {rates[bad]} at step "
                         f"{first_step + bad}; a rate must be a finite number >= 0, at most "
                         f"{FLOAT32_MAX:.3g} (float32, which the kernels compute in)")
    return single


class LearningRateSchedule:
    """A learning rate as a function of the optimizer's step (0 at the first step)."""

    def __call__(self, step: int) -> float:
        return float(self.rates(int(step), 1)[0])

    def rates(self, first_step: int, steps: int) -> np.ndarray:
        """float32 rates of steps first_step .. first_step + steps - 1, each checked as the
        kernels will read it: finite in float32 and >= 0."""
        step = np.arange(first_step, first_step + steps, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # float32_rates names the step
            rates = self._rates(step)
        return float32_rates(rates, first_step, repr(self))

    def _rates(self, step: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps), the exponent floored when
    staircase (Keras' ExponentialDecay)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False) -> None:
        self.initial_learning_rate = _rate(initial_learning_rate, "initial_learning_rate")
        self.decay_steps = _positive(decay_steps, "decay_steps", integer=True)
        self.decay_rate = _positive(decay_rate, "decay_rate")
        self.staircase = bool(staircase)

    def _rates(self, step: np.ndarray) -> np.ndarray:
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (np.floor(p) if self.staircase
                                                                 else p)

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}


class CosineDecay(LearningRateSchedule):
    """Keras' CosineDecay: without warmup, initial_learning_rate * ((1 - alpha) * 0.5 *
    (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha). With warmup_target and
    warmup_steps, first a linear ramp from initial_learning_rate to warmup_target over
    warmup_steps, then that cosine decay from warmup_target over decay_steps."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 warmup_target: float | None = None, warmup_steps: int = 0) -> None:
        # 0 is allowed: a warmup from 0 is the usual start (Keras' example).
        self.initial_learning_rate = _rate(initial_learning_rate, "initial_learning_rate",
                                           zero=True)
        self.decay_steps = _positive(decay_steps, "decay_steps", integer=True)
        self.alpha = _non_negative(alpha, "alpha")
        if self.alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.warmup_target = (None if warmup_target is None
                              else _rate(warmup_target, "warmup_target"))
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)):
            raise TypeError(f"warmup_steps must be an integer, got {type(warmup_steps).__name__}")
        if warmup_steps < 0 or (warmup_steps > 0 and self.warmup_target is None):
            raise ValueError(f"warmup_steps must be >= 0 (and > 0 needs warmup_target), got "
                             f"{warmup_steps}")
        self.warmup_steps = int(warmup_steps)

    def _decay(self, step: np.ndarray, start: float) -> np.ndarray:
        cosine = 0.5 * (1.0 + np.cos(np.pi * np.minimum(step, self.decay_steps)
                                     / self.decay_steps))
        return start * ((1 - self.alpha) * cosine + self.alpha)

    def _rates(self, step: np.ndarray) -> np.ndarray:
        if self.warmup_target is None:
            return self._decay(step, self.initial_learning_rate)
        ramp = (self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate)
                * step / max(self.warmup_steps, 1))
        return np.where(step < self.warmup_steps, ramp,
                        self._decay(step - self.warmup_steps, self.warmup_target))

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] up to and including step boundaries[0], values[1] up to boundaries[1], ...,
    values[-1] after the last boundary (Keras' PiecewiseConstantDecay)."""

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries, got "
                             f"{len(values)} values for {len(boundaries)} boundaries")
        for b in boundaries:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0:
                raise ValueError(f"boundaries must be integers >= 0, got {boundaries!r}")
        if any(b >= c for b, c in itertools.pairwise(boundaries)):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [_rate(v, "values") for v in values]

    def _rates(self, step: np.ndarray) -> np.ndarray:
        return np.asarray(self.values)[np.searchsorted(self.boundaries, step, side="left")]

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values}


class OneCycle(LearningRateSchedule):
    """The one-cycle policy (Smith; PyTorch's OneCycleLR with cosine annealing, without its
    momentum cycling): from max_learning_rate / div_factor up to max_learning_rate over the
    first pct_start of total_steps, then down to max_learning_rate / (div_factor *
    final_div_factor) at the last step, both halves on a cosine; constant after."""

    def __init__(self, max_learning_rate: float, total_steps: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4) -> None:
        self.max_learning_rate = _rate(max_learning_rate, "max_learning_rate")
        self.total_steps = _positive(total_steps, "total_steps", integer=True)
        self.pct_start = _positive(pct_start, "pct_start")
        if self.pct_start >= 1:
            raise ValueError(f"pct_start must lie in (0, 1), got {pct_start}")
        self.div_factor = _positive(div_factor, "div_factor")
        self.final_div_factor = _positive(final_div_factor, "final_div_factor")

    def _rates(self, step: np.ndarray) -> np.ndarray:
        start = self.max_learning_rate / self.div_factor
        end = start / self.final_div_factor
        peak = max(1.0, self.pct_start * self.total_steps - 1)
        last = max(peak + 1, self.total_steps - 1)
        s = np.minimum(step, last)

        def cosine(a: float, b: float, t: np.ndarray) -> np.ndarray:
            return b + (a - b) * 0.5 * (1 + np.cos(np.pi * t))

        up = cosine(start, self.max_learning_rate, np.clip(s / peak, 0, 1))
        down = cosine(self.max_learning_rate, end, np.clip((s - peak) / (last - peak), 0, 1))
        return np.where(s <= peak, up, down)

    def get_config(self) -> dict[str, Any]:
        return {"max_learning_rate": self.max_learning_rate, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


SCHEDULE_CLASSES: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls for cls in (ExponentialDecay, CosineDecay, PiecewiseConstantDecay,
                                  OneCycle)}


def schedule_to_config(schedule: LearningRateSchedule) -> dict[str, Any]:
    return {"class": type(schedule).__name__, **schedule.get_config()}


def schedule_from_config(config: dict[str, Any]) -> LearningRateSchedule:
    config = dict(config)
    name = config.pop("class", None)
    if name not in SCHEDULE_CLASSES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULE_CLASSES)}")
    return SCHEDULE_CLASSES[name](**config)
