"""Tolerances for comparing kernels, in one place, and the one way to compare with them.

Errors are norm-relative: max|got - want| / max(max|want|, TINY). An elementwise rtol is
meaningless near zero (a gradient entry of 1e-9 that comes out as 2e-9 is not a bug), while a
norm-relative error says how big the mistake is compared with the result as a whole.
"""

from __future__ import annotations

import numpy as np

# float32 compiled kernel vs its float32 NumPy twin (mnistnet.reference).
FORWARD_RTOL = 1e-5
BACKWARD_RTOL = 1e-4

# Central differences in float64 (eps below) vs an analytic float64 gradient: truncation error
# ~eps^2 and rounding ~1e-16 / eps leave ~1e-9; 1e-6 leaves room for constants that the
# reference rounds to float32 (e.g. 2 / (B C) in mse_backward is ~3e-8 off).
GRADCHECK_EPS = 1e-6
GRADCHECK_RTOL = 1e-6
# A float32 gradient (compiled or reference kernels) vs float64 central differences.
FLOAT32_GRAD_RTOL = 1e-3
# Every gradient check first asserts the analytic gradient is larger than this (in max-abs):
# a check that passes on an all-zero gradient proves nothing.
GRAD_FLOOR = 1e-4

# Denominator floor for the relative error, so an all-zero `want` is compared absolutely.
TINY = float(np.finfo(np.float32).tiny)


def rel_error(got, want) -> float:
    """max|got - want| / max(max|want|, TINY), computed in float64."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != expected {want.shape}")
    if want.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(want))), TINY)
    return float(np.max(np.abs(got - want))) / scale


def assert_close(got, want, rtol: float, what: str) -> None:
    """Fail unless got equals want to a norm-relative error of rtol. `what` names the kernel
    and the shapes, and goes into the failure message with the error and where it is worst."""
    got_a = np.asarray(got, dtype=np.float64)
    want_a = np.asarray(want, dtype=np.float64)
    if got_a.shape != want_a.shape:
        raise AssertionError(f"{what}: shape {got_a.shape}, expected {want_a.shape}")
    if not np.all(np.isfinite(got_a)) and np.all(np.isfinite(want_a)):
        bad = np.argwhere(~np.isfinite(got_a))
        raise AssertionError(f"{what}: {len(bad)} non-finite value(s), first at "
                             f"{tuple(int(i) for i in bad[0])}")
    err = rel_error(got_a, want_a)
    if not err <= rtol:  # `not <=` so that NaN fails
        diff = np.abs(got_a - want_a)
        where = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
        where = tuple(int(i) for i in where)
        raise AssertionError(
            f"{what}: relative error {err:.3g} > {rtol:.0e} (worst at {where}: "
            f"got {got_a[where]!r}, expected {want_a[where]!r}; max|expected| "
            f"{float(np.max(np.abs(want_a))) if want_a.size else 0.0:.3g})")
