"""Optimizers: SGD (with optional momentum) and Adam, Keras 3's update rules and defaults.

An optimizer here holds its hyperparameters and its step count (`iterations`, as in Keras);
its per-weight state (momentum's velocity, Adam's two moments) lives in the model, in blocks
with the parameters' layout (see mnistnet.plan), so the kernels update an element and its
state at the same offset. The update rules are stated in mnistnet.reference, whose functions
are the NumPy twins of the compiled updates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mnistnet import reference


def _learning_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"learning_rate must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0, got {value}")
    lo, hi = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if not lo <= value <= hi:  # the kernels compute in float32
        raise ValueError(f"learning_rate must lie in [{lo:.3g}, {hi:.3g}] (float32), got {value}")
    return float(value)


def _unit_interval(value: Any, name: str) -> float:
    """A number in [0, 1) (momentum, Adam's betas)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:  # also refuses NaN
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return float(value)


class Optimizer:
    """What the model asks of an optimizer: its state's size, its kernel settings and its
    config."""

    #: blocks of per-weight state, each with the parameters' layout
    slots = 0

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = _learning_rate(learning_rate)
        self.iterations = 0  # optimizer steps taken (Adam's bias correction counts them)

    def kernel_settings(self) -> tuple[int, float, bool, float, float, float]:
        """(code, momentum, nesterov, beta_1, beta_2, epsilon) for the kernels."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

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
        learning_rate: step size (Keras' default 0.01).
        momentum: in [0, 1) (default 0: plain SGD, no state).
        nesterov: Nesterov momentum (only with momentum > 0).
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(learning_rate)
        self.momentum = _unit_interval(momentum, "momentum")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        self.slots = 1 if self.momentum > 0 else 0

    def kernel_settings(self) -> tuple[int, float, bool, float, float, float]:
        code = reference.OPTIMIZERS["momentum" if self.momentum > 0 else "sgd"]
        return (code, self.momentum, self.nesterov, 0.0, 0.0, 0.0)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"learning_rate": self.learning_rate}
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
        learning_rate: step size (default 0.001).
        beta_1, beta_2: decay rates of the moment estimates, in [0, 1) (0.9, 0.999).
        epsilon: > 0, added to sqrt(v) (Keras' default 1e-7).
    """

    slots = 2

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate)
        self.beta_1 = _unit_interval(beta_1, "beta_1")
        self.beta_2 = _unit_interval(beta_2, "beta_2")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
            raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def kernel_settings(self) -> tuple[int, float, bool, float, float, float]:
        return (reference.OPTIMIZERS["adam"], 0.0, False, self.beta_1, self.beta_2,
                self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}


OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {"SGD": SGD, "Adam": Adam}


def optimizer_to_config(optimizer: Optimizer) -> dict[str, Any]:
    return {"class": type(optimizer).__name__, **optimizer.get_config()}


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """The inverse of optimizer_to_config; a config without "class" is an SGD (format 1)."""
    config = dict(config)
    name = config.pop("class", "SGD")
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_CLASSES)}")
    return OPTIMIZER_CLASSES[name](**config)
