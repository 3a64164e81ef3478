"""Weight regularisers (Keras 3's names and meanings).

    mn.Dense(128, activation="relu", kernel_regularizer=mn.regularizers.L2(1e-4))

L2(l2) adds l2 * sum(kernel ** 2) to the reported loss, so 2 * l2 * kernel to the kernel's
gradient (the bias is not regularised), in both backends.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class L2:
    """l2 * sum(w ** 2) over a layer's kernel (Keras' default l2 = 0.01)."""

    def __init__(self, l2: float = 0.01) -> None:
        if isinstance(l2, bool) or not isinstance(l2, (int, float, np.floating)):
            raise TypeError(f"l2 must be a number, got {type(l2).__name__}")
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        if 2 * l2 > _FLOAT32_MAX:  # the kernels add (2 * l2) * w to the gradient in float32
            raise ValueError(f"l2 must be at most {_FLOAT32_MAX / 2:.3g} (twice it, in float32, "
                             f"scales the kernel's gradient), got {l2}")
        self.l2 = float(l2)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}

    def __repr__(self) -> str:
        return f"L2({self.l2})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, L2) and other.l2 == self.l2

    def __hash__(self) -> int:
        return hash(("L2", self.l2))


def regularizer_to_config(regularizer: L2 | None) -> dict[str, Any] | None:
    return None if regularizer is None else {"class": "L2", **regularizer.get_config()}


def regularizer_from_config(config: Any) -> L2 | None:
    """None, an L2, or its config ({"class": "L2", "l2": ...})."""
    if config is None or isinstance(config, L2):
        return config
    if not isinstance(config, dict) or config.get("class") != "L2":
        raise ValueError(f"unknown kernel_regularizer {config!r}; valid: L2")
    return L2(**{k: v for k, v in config.items() if k != "class"})
