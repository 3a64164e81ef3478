"""Losses as objects, with Keras 3's names and arguments, accepted wherever a loss name is:

    model = mn.Model(layers, loss=mn.losses.CategoricalCrossentropy(label_smoothing=0.1))

A name ("categorical_crossentropy", "mse") means the loss with its defaults. Label smoothing
is Keras' formula, in float32: each target row becomes

    target * (1 - label_smoothing) + label_smoothing / classes

for the loss and its gradient, in training and in evaluate (val_loss included); accuracy
still counts the true class (smoothing keeps each row's argmax). Both backends train on the
same smoothed targets (smooth_targets), so their kernels are the plain cross-entropy's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["CategoricalCrossentropy", "Loss", "MeanSquaredError", "get", "smooth_targets"]


class Loss:
    """What a model asks of its loss: its name (the kernels' code) and its config."""

    name: str = ""

    def get_config(self) -> dict[str, Any]:
        return {}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MeanSquaredError(Loss):
    """mean over rows of the sum over outputs of (prediction - target)^2, divided by the
    number of outputs (Keras' "mse")."""

    name = "mse"


class CategoricalCrossentropy(Loss):
    """-mean over rows of sum(target * log(p)) for a softmax output (Keras 3's).

    Args:
        label_smoothing: in [0, 1): the targets are smoothed towards the uniform
            distribution, target * (1 - label_smoothing) + label_smoothing / classes (the
            network is trained to give the true class 1 - label_smoothing + its share, not 1:
            it stops pushing the logits apart once that is reached). Default 0: none.
    """

    name = "categorical_crossentropy"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = _label_smoothing(label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing}


LOSS_CLASSES: dict[str, type[Loss]] = {
    MeanSquaredError.name: MeanSquaredError,
    CategoricalCrossentropy.name: CategoricalCrossentropy,
}


def _label_smoothing(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"label_smoothing must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"label_smoothing must lie in [0, 1), got {value}")
    return float(value)


def get(identifier: str | Loss | dict[str, Any]) -> Loss:
    """A Loss from a name (its defaults), a Loss, or a config as Loss.to_config writes it
    ({"name": ..., "label_smoothing": ...})."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        cls = _class_of(config.pop("name", None))
        try:
            return cls(**config)
        except TypeError:
            raise ValueError(f"loss {cls.name!r} takes {sorted(cls().get_config())}, got "
                             f"{sorted(config)}") from None
    if isinstance(identifier, str):
        return _class_of(identifier)()
    raise TypeError(f"loss must be a name ({', '.join(repr(n) for n in LOSS_CLASSES)}) or a "
                    f"mnistnet.losses.Loss, got {type(identifier).__name__}")


def _class_of(name: Any) -> type[Loss]:
    if name not in LOSS_CLASSES:
        raise ValueError(f"unknown loss {name!r}; valid: "
                         f"{', '.join(repr(n) for n in LOSS_CLASSES)}")
    return LOSS_CLASSES[name]


def to_config(loss: Loss) -> str | dict[str, Any]:
    """The model config's "loss": the name when the loss has its defaults (the files of
    earlier versions say so too), else {"name": ..., and its arguments}."""
    if loss == type(loss)():
        return loss.name
    return {"name": loss.name, **loss.get_config()}


def smooth_targets(targets: np.ndarray, label_smoothing: float) -> np.ndarray:
    """Keras' label smoothing of float32 target rows (n, classes), in its float32 operations:
    targets * float32(1 - s) + float32(s) / float32(classes). A new array; the targets
    themselves when s is 0."""
    if not label_smoothing:
        return targets
    classes = np.float32(targets.shape[1])
    keep = np.float32(1.0 - label_smoothing)
    share = np.float32(label_smoothing) / classes
    return targets * keep + share
