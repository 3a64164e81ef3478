"""Optimizers: SGD (with optional momentum), Adam, AdamW and RMSprop, Keras 3's update rules
and defaults.

An optimizer here holds its hyperparameters, its learning rate (a number or a schedule from
mnistnet.schedules) and its step count (`iterations`, as in Keras); its per-weight state
(momentum's velocity, Adam's two moments, RMSprop's average of squares) lives in the model, in
blocks with the parameters' layout (see mnistnet.plan), so the kernels update an element and
its state at the same offset. The update rules are stated in mnistnet.reference, whose
functions are the NumPy twins of the compiled updates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mnistnet.codes import optimizer_settings, optimizer_slots
from mnistnet.schedules import (
    FLOAT32_MAX,
    LearningRateSchedule,
    float32_rates,
    schedule_from_config,
    schedule_to_config,
)

FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def _learning_rate(value: Any) -> float | LearningRateSchedule:
    """A learning rate as a user gives it: a schedule, or a number that float32 holds as a
    normal number (1e39 would be Inf in the kernels, 1e-50 would be 0: no training)."""
    if isinstance(value, LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"learning_rate must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0, got {value}")
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:  # the kernels compute in float32
        raise ValueError(f"learning_rate must lie in [{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}] "
                         f"(float32), got {value}")
    return float(value)


def float32_rate(value: Any) -> float:
    """A learning rate number rounded to float32, which may be subnormal or 0: finite,
    >= 0 and at most float32's maximum, else ValueError."""
    rate = _float32_number(value, "learning_rate")
    return float(np.float32(rate))


def _float32_number(value: Any, name: str, lowest: float = 0.0) -> float:
    """A finite number >= lowest (> 0 if lowest > 0) that float32 holds: the kernels read
    these settings as float32, where a float64 beyond 3.4e38 is Inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and (value > 0 if lowest > 0 else value >= 0)):
        raise ValueError(f"{name} must be a finite number {'>' if lowest > 0 else '>='} 0, "
                         f"got {value}")
    if not lowest <= value <= FLOAT32_MAX:
        raise ValueError(f"{name} must lie in [{lowest:.3g}, {FLOAT32_MAX:.3g}] (float32), "
                         f"got {value}")
    return float(value)


def _unit_interval(value: Any, name: str) -> float:
    """A number in [0, 1) (momentum, Adam's betas)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:  # also refuses NaN
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return float(value)


def _epsilon(value: Any) -> float:
    # Not below float32's smallest normal number: 1e-50 would be 0 there, and 0 / 0 NaN.
    return _float32_number(value, "epsilon", lowest=FLOAT32_TINY)


class Optimizer:
    """What the model asks of an optimizer: its state's size, its kernel settings, the
    learning rate of each step, and its config."""

    def __init__(self, learning_rate: float | LearningRateSchedule) -> None:
        self.learning_rate = learning_rate
        self.iterations = 0  # optimizer steps taken (Adam's bias correction counts them)

    @property
    def learning_rate(self) -> float | LearningRateSchedule:
        """A number or a schedule; set, it is checked as the constructor checks it."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float | LearningRateSchedule) -> None:
        self._learning_rate = _learning_rate(value)

    def set_float32_rate(self, rate: float) -> None:
        """Set the learning rate as Keras' float32 variable holds what is assigned to it:
        rounded to float32, where a rate lowered step by step reaches subnormal numbers,
        then 0 (which moves nothing) instead of an error (ReduceLROnPlateau's way down)."""
        self._learning_rate = float32_rate(rate)

    def rates(self, first_step: int, steps: int) -> np.ndarray:
        """float32 learning rates of steps first_step .. first_step + steps - 1, checked as
        the kernels read them (mnistnet.schedules.float32_rates)."""
        if isinstance(self.learning_rate, LearningRateSchedule):
            return self.learning_rate.rates(first_step, steps)
        return float32_rates(np.full(steps, self.learning_rate), first_step,
                             f"{type(self).__name__}'s learning_rate")

    def current_learning_rate(self) -> float:
        """The rate of the next step."""
        return float(self.rates(self.iterations, 1)[0])

    @property
    def slots(self) -> int:
        """Blocks of per-weight state, each with the parameters' layout."""
        return optimizer_slots(self.kernel_settings())

    def kernel_settings(self) -> np.ndarray:
        """The settings the kernels read: one mnistnet.codes.OPTIMIZER_DTYPE record."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _rate_config(self) -> Any:
        if isinstance(self.learning_rate, LearningRateSchedule):
            return schedule_to_config(self.learning_rate)
        return self.learning_rate

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (Keras 3's SGD):

        momentum == 0:  w = w - learning_rate * g
        momentum > 0:   velocity = momentum * velocity - learning_rate * g
                        w = w + velocity
                        (nesterov: w = w + momentum * velocity - learning_rate * g)

    Args:
        learning_rate: step size (Keras' default 0.01), or a schedule (mnistnet.schedules).
        momentum: in [0, 1) (default 0: plain SGD, no state).
        nesterov: Nesterov momentum (only with momentum > 0).
    """

    def __init__(self, learning_rate: float | LearningRateSchedule = 0.01,
                 momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(learning_rate)
        self.momentum = _unit_interval(momentum, "momentum")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = bool(nesterov)

    def kernel_settings(self) -> np.ndarray:
        if self.momentum > 0:
            return optimizer_settings("momentum", momentum=self.momentum,
                                      nesterov=self.nesterov)
        return optimizer_settings("sgd", nesterov=self.nesterov)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"learning_rate": self._rate_config()}
        if self.momentum > 0 or self.nesterov:
            config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


class Adam(Optimizer):
    """Adam (Keras 3's update rule and defaults), at step t = 1, 2, ...:

        m = m + (g - m) * (1 - beta_1)
        v = v + (g^2 - v) * (1 - beta_2)
        alpha = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        w = w - (m * alpha) / (sqrt(v) + epsilon)

    Args:
        learning_rate: step size (default 0.001), or a schedule (mnistnet.schedules).
        beta_1, beta_2: decay rates of the moment estimates, in [0, 1) (0.9, 0.999).
        epsilon: > 0, added to sqrt(v) (Keras' default 1e-7).
    """

    def __init__(self, learning_rate: float | LearningRateSchedule = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate)
        self.beta_1 = _unit_interval(beta_1, "beta_1")
        self.beta_2 = _unit_interval(beta_2, "beta_2")
        self.epsilon = _epsilon(epsilon)

    def kernel_settings(self) -> np.ndarray:
        return optimizer_settings("adam", beta_1=self.beta_1, beta_2=self.beta_2,
                                  epsilon=self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self._rate_config(), "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3's AdamW): before each Adam step, every
    weight (biases too, as in Keras) shrinks by w = w - w * weight_decay * learning_rate.

    Args:
        learning_rate: step size (default 0.001), or a schedule.
        weight_decay: >= 0 (Keras' default 0.004).
        beta_1, beta_2, epsilon: as Adam's.
    """

    def __init__(self, learning_rate: float | LearningRateSchedule = 0.001,
                 weight_decay: float = 0.004, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon)
        self.weight_decay = _float32_number(weight_decay, "weight_decay")

    def kernel_settings(self) -> np.ndarray:
        return optimizer_settings("adamw", beta_1=self.beta_1, beta_2=self.beta_2,
                                  epsilon=self.epsilon, weight_decay=self.weight_decay)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight_decay": self.weight_decay}


class RMSprop(Optimizer):
    """RMSprop (Keras 3's update rule and defaults):

        velocity = rho * velocity + (1 - rho) * g^2
        denominator = velocity + epsilon                  (centered: minus average_grad^2,
        average_grad = rho * average_grad + (1 - rho) * g  kept alongside)
        increment = learning_rate * g / sqrt(denominator)
        w = w - increment     (momentum > 0: m = momentum * m + increment; w = w - m)

    Args:
        learning_rate: step size (default 0.001), or a schedule.
        rho: decay of the average of squares, in [0, 1) (0.9).
        momentum: in [0, 1) (0).
        epsilon: > 0 (1e-7).
        centered: normalise by the variance rather than the second moment.
    """

    def __init__(self, learning_rate: float | LearningRateSchedule = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7, centered: bool = False) -> None:
        super().__init__(learning_rate)
        self.rho = _unit_interval(rho, "rho")
        self.momentum = _unit_interval(momentum, "momentum")
        self.epsilon = _epsilon(epsilon)
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"centered must be True or False, got {centered!r}")
        self.centered = bool(centered)

    def kernel_settings(self) -> np.ndarray:
        return optimizer_settings("rmsprop", momentum=self.momentum, epsilon=self.epsilon,
                                  rho=self.rho, centered=self.centered)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self._rate_config(), "rho": self.rho,
                "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {
    "SGD": SGD, "Adam": Adam, "AdamW": AdamW, "RMSprop": RMSprop}


def optimizer_to_config(optimizer: Optimizer) -> dict[str, Any]:
    return {"class": type(optimizer).__name__, **optimizer.get_config()}


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """The inverse of optimizer_to_config; a config without "class" is an SGD (format 1)."""
    config = dict(config)
    name = config.pop("class", "SGD")
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_CLASSES)}")
    rate = config.get("learning_rate")
    if isinstance(rate, dict):
        config["learning_rate"] = schedule_from_config(rate)
    elif _below_normal(rate):  # where ReduceLROnPlateau took it (set_float32_rate)
        config["learning_rate"] = FLOAT32_TINY
    optimizer = OPTIMIZER_CLASSES[name](**config)
    if _below_normal(rate):
        optimizer.set_float32_rate(rate)
    return optimizer


def _below_normal(rate: Any) -> bool:
    """A number in [0, FLOAT32_TINY): a rate lowered below float32's normal range."""
    return (isinstance(rate, (int, float)) and not isinstance(rate, bool)
            and 0 <= rate < FLOAT32_TINY)
