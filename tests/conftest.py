"""Shared fixtures: every SIMD path this CPU runs, MNIST from $MNISTNET_DATA, and SIGINT that
raises."""

from __future__ import annotations

import os
import signal

import pytest

import mnistnet
from mnistnet import fast

SUPPORTED_SIMD_PATHS = [p for p in fast.SIMD_PATHS if fast.simd_supported(p)]


@pytest.fixture(params=SUPPORTED_SIMD_PATHS, ids=SUPPORTED_SIMD_PATHS)
def simd_path(request):
    """Each SIMD path this CPU (and build) supports, selected for the test's duration; the
    best path is restored afterwards."""
    fast.select_simd(request.param)
    try:
        assert fast.simd_path() == request.param
        yield request.param
    finally:
        fast.select_simd(None)


@pytest.fixture(scope="session")
def mnist():
    """mnistnet.load_mnist() from the folder $MNISTNET_DATA names; skips when it is unset."""
    path = os.environ.get("MNISTNET_DATA")
    if not path:
        pytest.skip("set MNISTNET_DATA to a folder holding the four MNIST files")
    return mnistnet.load_mnist(path)


@pytest.fixture
def sigint_raises():
    """SIGINT -> KeyboardInterrupt even when the test runner was started with SIGINT ignored
    (a background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
