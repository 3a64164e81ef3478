"""Ctrl-C from another thread while a fit runs, for the interrupt tests."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest

HAS_PTHREAD_KILL = hasattr(signal, "pthread_kill")


def sigint_lateness(model, fit: Callable[[], object], delay: float = 0.3) -> float:
    """Run fit() on this (the main) thread while another thread sends it SIGINT `delay`
    seconds after `model` starts training. Fails the test unless KeyboardInterrupt reaches
    the caller (a fit that ends first fails too); returns the seconds from the signal to it.
    Needs SIGINT to raise (the `sigint_raises` fixture)."""
    sent: list[float] = []

    def interrupt():
        deadline = time.monotonic() + 30
        while not model._training.locked() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        sent.append(time.perf_counter())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    timer = threading.Thread(target=interrupt, daemon=True)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        fit()
        time.sleep(5)  # a fit that ended before the signal: let it land here, then fail
        pytest.fail("fit finished before the interrupt")
    caught = time.perf_counter()
    timer.join(timeout=30)
    assert sent, "the interrupting thread never sent SIGINT"
    return caught - sent[0]
