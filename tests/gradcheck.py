"""Central differences, and the one way gradient tests compare with them."""

from __future__ import annotations

import numpy as np
from tolerances import GRAD_FLOOR, GRADCHECK_EPS, assert_close


def central_differences(f, x, eps=GRADCHECK_EPS):
    """d f / d x for scalar f(x), x float64, by (f(x + eps) - f(x - eps)) / (2 eps)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f(x)
        flat[i] = old - eps
        down = f(x)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def check_gradient(analytic, numeric, rtol, what):
    """analytic == numeric to a norm-relative rtol, after refusing a (nearly) zero gradient."""
    analytic = np.asarray(analytic, dtype=np.float64)
    peak = float(np.max(np.abs(analytic)))
    assert peak > GRAD_FLOOR, f"{what}: analytic gradient is ~0 (max |g| = {peak:.3g})"
    assert_close(analytic, numeric, rtol, what)
