"""Layer plans and buffers for the network-level kernel tests: the dense nets the tests name
by their widths and activation codes, and the optimizer settings tuples the kernels take."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import mnistnet as mn
from mnistnet import reference
from mnistnet.plan import Plan

ACT_NAMES = {code: name for name, code in reference.ACTIVATIONS.items()}
# (code, momentum, nesterov, beta_1, beta_2, epsilon), as Optimizer.kernel_settings gives them
SGD = mn.SGD().kernel_settings()
NO_DROPOUT_KEY = (0, 0, 0)


def dense_plan(sizes: Sequence[int], acts: Sequence[int]) -> Plan:
    """The plan of Dense layers of widths sizes[1:] (activation codes acts) on sizes[0]
    inputs."""
    layers = [mn.Dense(int(w), activation=ACT_NAMES[int(a)])
              for w, a in zip(sizes[1:], acts, strict=True)]
    return Plan(layers, (int(sizes[0]),))


def net_buffers(plan: Plan, rows: int, threads: int = 1):
    """(grads, acts, dacts) zeroed, sized by the plan for `rows` rows."""
    n_p, n_a, n_d = plan.buffer_sizes(rows, threads)
    return np.zeros(n_p, np.float32), np.zeros(n_a, np.float32), np.zeros(n_d, np.float32)


def no_state() -> np.ndarray:
    """SGD's optimizer state: none."""
    return np.zeros(0, np.float32)
