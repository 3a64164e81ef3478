"""The multi-threaded epoch (the "team") against the one-thread epoch.

train_epoch normally lets a timed probe choose between them, so which one a test exercises
depends on the machine's load. Here each schedule is forced, and the team must give the same
weights, bit for bit, as one thread: with the first layer split by columns (wide elementwise
first layers) and without (narrow, softmax or single-layer nets), for uneven row and column
blocks, and when it stops early (divergence, an overflowing update, Ctrl-C).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from interrupting import HAS_PTHREAD_KILL, sigint_lateness

import mnistnet as mn
from mnistnet import _kernels, fast, reference
from mnistnet.plan import CACHE_LINE

ROWS, FEATURES = 300, 40

CE = "categorical_crossentropy"
ARCHITECTURES = {
    # first layer split by columns: wide and elementwise
    "relu128-relu64-softmax": ([(128, "relu"), (64, "relu"), (10, "softmax")], CE),
    "sigmoid100-softmax": ([(100, "sigmoid"), (10, "softmax")], CE),
    "linear200-relu7-softmax": ([(200, "linear"), (7, "relu"), (10, "softmax")], CE),
    "relu128-linear": ([(128, "relu"), (10, "linear")], "mse"),
    # rows only: too narrow to split, softmax first, or a single layer on narrow inputs
    "relu33-sigmoid": ([(33, "relu"), (10, "sigmoid")], "mse"),
    "perceptron": ([(10, "sigmoid")], "mse"),
    "linear": ([(10, "linear")], "mse"),
    "softmax-first": ([(64, "softmax"), (10, "softmax")], CE),
    # one narrow layer: with WIDE inputs, two threads take a piece of the inputs each
    "softmax": ([(10, "softmax")], CE),
}
ONE_NARROW_LAYER = ["perceptron", "linear", "softmax"]
COLUMNS_TEAM = ["relu128-relu64-softmax", "sigmoid100-softmax", "linear200-relu7-softmax",
                "relu128-linear"]
WIDE = 100  # inputs: two pieces of at least two vectors each


@pytest.fixture
def schedule():
    """Force an epoch schedule and a thread count, even above the cores (a team of 3 on a
    2-core machine); put both back afterwards."""

    def force(name: str, threads: int) -> None:
        _kernels._set_epoch_schedule(name)
        _kernels._set_thread_limit(threads)
        mn.set_num_threads(threads)
        assert mn.get_num_threads() == threads

    yield force
    _kernels._set_epoch_schedule("auto")
    _kernels._set_thread_limit(0)
    mn.set_num_threads(int(os.environ.get("MNISTNET_NUM_THREADS", "0") or 0))


def _data(rows=ROWS, features=FEATURES, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, features), dtype=np.float32), rng.integers(0, 10, rows)


def _model(arch: str, lr: float = 0.05, features: int = FEATURES) -> mn.Model:
    layers, loss = ARCHITECTURES[arch]
    return mn.Model([mn.Dense(units, activation=act) for units, act in layers],
                    input_dim=features, loss=loss, optimizer=mn.SGD(lr), seed=0)


def _fit(arch, schedule, name, threads, batch_size, lr=0.05, epochs=2, features=FEATURES):
    schedule(name, threads)
    x, y = _data(features=features)
    model = _model(arch, lr, features)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model, history, [str(w.message) for w in caught]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("batch_size", [2, 7, 32, 33, ROWS + 5])
@pytest.mark.parametrize("threads", [2, 3])
def test_team_gives_the_weights_of_one_thread(arch, batch_size, threads, schedule):
    serial, serial_history, _ = _fit(arch, schedule, "serial", 1, batch_size)
    team, team_history, _ = _fit(arch, schedule, "team", threads, batch_size)
    if batch_size >= 2 * threads:  # else the epoch runs on one thread
        assert _kernels._last_team() == ("columns" if arch in COLUMNS_TEAM else "rows")
    assert np.array_equal(team.params, serial.params)
    # Not part of the promise, but a team that skipped or repeated a batch would show here.
    np.testing.assert_allclose(team_history.history["loss"], serial_history.history["loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(team_history.history["accuracy"],
                               serial_history.history["accuracy"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ONE_NARROW_LAYER)
@pytest.mark.parametrize("batch_size", [2, 7, 32, 33, ROWS + 5])
@pytest.mark.parametrize("threads", [2, 3])
def test_inputs_team_gives_the_weights_of_one_thread(arch, batch_size, threads, schedule):
    serial, serial_history, _ = _fit(arch, schedule, "serial", 1, batch_size, features=WIDE)
    team, team_history, _ = _fit(arch, schedule, "team", threads, batch_size, features=WIDE)
    if batch_size >= 2 * threads:
        assert _kernels._last_team() == "inputs"
    assert np.array_equal(team.params, serial.params)
    np.testing.assert_allclose(team_history.history["loss"], serial_history.history["loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(team_history.history["accuracy"],
                               serial_history.history["accuracy"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["relu128-relu64-softmax", "relu33-sigmoid", "softmax"])
@pytest.mark.parametrize("rows", [9, 16 * 5 + 3, 16 * 31 + 1, 16 * 40 + 15, 16 * 70 + 8])
def test_probes_give_the_weights_of_one_thread(arch, rows, schedule):
    """Nothing but probes (one thread, then the team, back to back), so the data's end, a
    short last batch, falls inside a one-thread probe (5, 31, 70 batches in) or a team probe
    (40): every batch runs once, none with no rows (whose mean loss would be NaN and stop
    the epoch), and the weights are those of one thread."""
    features = WIDE if arch == "softmax" else FEATURES
    x, y = _data(rows, features)
    trained = {}
    for name, threads in (("serial", 1), ("probes", 2)):
        schedule(name, threads)
        model = _model(arch, features=features)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a NaN loss warns and stops the epoch
            history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        trained[name] = model, history
    (serial, serial_history), (probed, probed_history) = trained["serial"], trained["probes"]
    assert probed.optimizer.iterations == serial.optimizer.iterations == 2 * -(-rows // 16)
    assert np.array_equal(probed.params, serial.params)
    np.testing.assert_allclose(probed_history.history["loss"],
                               serial_history.history["loss"], rtol=1e-5)


@pytest.mark.parametrize(("arch", "features"), [("relu128-linear", FEATURES),
                                                ("linear", FEATURES), ("linear", WIDE)])
@pytest.mark.parametrize("lr", [100.0, 3e38])
def test_team_stops_where_one_thread_stops(arch, features, lr, schedule):
    """A diverging loss (lr=100) or an update that overflows the weights (3e38) stops the
    team at the same batch as one thread, with the same finite weights."""
    serial, serial_history, serial_warnings = _fit(arch, schedule, "serial", 1, 16, lr, 4,
                                                   features)
    team, team_history, team_warnings = _fit(arch, schedule, "team", 2, 16, lr, 4, features)
    stops = [m for m in serial_warnings if "loss became" in m]
    assert len(stops) == 1, serial_warnings
    assert [m for m in team_warnings if "loss became" in m] == stops
    assert np.isfinite(team.params).all()
    assert np.array_equal(team.params, serial.params)
    assert team_history.epoch == serial_history.epoch


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", ["serial", "team"])
@pytest.mark.parametrize("column", ["first", "last"])  # each half of the inputs team's
def test_the_epoch_stops_before_a_batch_holding_nan_input(arch, name, column, schedule):
    """fast.train_epoch checks each batch's input rows as it gathers them: every schedule
    stops before the batch holding the NaN, with one thread's weights of the batches before,
    and the counts of the NumPy twin."""
    features = WIDE if arch in ONE_NARROW_LAYER else FEATURES
    x, y = _data(features=features)
    x[170, 0 if column == "first" else features - 1] = np.nan  # in batch 170 // 16 = 10
    targets = np.eye(10, dtype=np.float32)[y]
    order = np.arange(ROWS)

    def run(kernels):
        model = _model(arch, features=features, lr=0.05)
        acts, dacts = model._training_buffers(16)
        result = kernels.train_epoch(*model._epoch_arguments(acts, dacts, x, targets, order,
                                                             16, 0))
        return result, model.params

    schedule("serial", 1)
    serial, serial_params = run(fast)
    schedule(name, 2)
    result, params = run(fast)
    twin, twin_params = run(reference)
    assert result[4] == fast.EPOCH_NONFINITE_INPUT == reference.EPOCH_NONFINITE_INPUT
    assert result[2:] == twin[2:] == serial[2:] == (160, 10, fast.EPOCH_NONFINITE_INPUT)
    assert np.array_equal(params, serial_params)
    np.testing.assert_allclose(params, twin_params, rtol=1e-4, atol=1e-5)


STOP_RACE_SCRIPT = """
import numpy as np, mnistnet as mn
from mnistnet import _kernels, fast
_kernels._set_epoch_schedule("team")
mn.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.random((64, 40), dtype=np.float32)
x[40, 7] = np.nan
targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
order = np.arange(64)
for layers in ([128, 64], [100], [128]):
    model = mn.Model([mn.Dense(u, activation="relu") for u in layers]
                     + [mn.Dense(10, activation="softmax")], input_dim=40,
                     loss="categorical_crossentropy")
    acts, dacts = model._training_buffers(8)
    args = model._epoch_arguments(acts, dacts, x, targets, order, 8, 0)
    for _ in range(1500):
        r = fast.train_epoch(*args)
        assert r[3:] == (5, fast.EPOCH_NONFINITE_INPUT), r
    assert _kernels._last_team() == "columns"
print("ok")
"""


def test_team_threads_agree_on_a_nan_input_every_time(tmp_path):
    """Thousands of stops at a NaN input on the columns team: a thread that read another's
    flag for the wrong batch would stop a step early and leave the other at a barrier (a
    hang, caught by the timeout). Run from tmp_path: the source tree must not shadow the
    installed package."""
    done = subprocess.run([sys.executable, "-c", STOP_RACE_SCRIPT], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.skipif(not HAS_PTHREAD_KILL, reason="POSIX signals")
def test_ctrl_c_stops_the_team_within_a_batch(schedule, sigint_raises):
    schedule("team", 2)
    features = 256
    rng = np.random.default_rng(5)
    x = rng.random((20_000, features), dtype=np.float32)
    y = rng.integers(0, 10, 20_000)
    model = mn.Model([mn.Dense(1024, activation="relu"), mn.Dense(10, activation="softmax")],
                     input_dim=features, loss="categorical_crossentropy")
    late = sigint_lateness(model, lambda: model.fit(x, y, epochs=50, batch_size=32, verbose=0))
    assert late < 0.5, f"KeyboardInterrupt {late:.2f} s late"
    assert np.isfinite(model.params).all()
    assert model.epochs_trained < 50
    # The weights are those of a completed step, copied back from the team's blocks: one
    # more step on one thread continues from them like any model.
    schedule("serial", 1)
    before = model.params.copy()
    model.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(model.params, before)


def test_model_buffers_start_on_a_cache_line():
    """The team splits weight blocks at multiples of 16 floats; aligned buffers keep the two
    threads off each other's cache lines."""
    model = _model("relu128-relu64-softmax")
    for buffer in (model.params, model.grads):
        assert buffer.ctypes.data % CACHE_LINE == 0
        assert buffer.dtype == np.float32 and buffer.flags.c_contiguous


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match=r"unknown epoch schedule 'fast'.*auto"):
        _kernels._set_epoch_schedule("fast")


@pytest.mark.parametrize("chunk", [6, 7, 33, 256])
@pytest.mark.parametrize("threads", [2, 3])
def test_predict_on_a_team_gives_the_bits_of_one_thread(chunk, threads, schedule):
    """Large predictions split their rows across threads, each through its own rows of the
    scratch block; the outputs must not depend on it (nor overrun the scratch)."""
    x, y = _data(rows=1013)
    model = _model("relu128-relu64-softmax")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    schedule("auto", 1)
    one = model._predict_array(x, chunk)
    schedule("auto", threads)
    assert np.array_equal(model._predict_array(x, chunk), one)
    assert np.array_equal(model._predict_array(x[:chunk - 1], chunk), one[:chunk - 1])


@pytest.mark.parametrize(("rows", "team"), [(1024, True), (64, False)])
def test_a_short_epoch_of_heavy_batches_probes_the_team(rows, team):
    """The epoch chooses from the work of its batches, not the number of rows: eight batches
    of a convnet (a few MFLOP an image) probe the team; a handful of dense rows (microseconds
    of work) run on one thread."""
    before = mn.get_num_threads()
    mn.set_num_threads(2)
    try:
        model = (mn.preset("convnet") if team else
                 mn.Model([mn.Dense(10, activation="softmax")], input_dim=784,
                          loss="categorical_crossentropy"))
        x = np.random.default_rng(0).random((rows, 784), dtype=np.float32)
        y = np.arange(rows) % 10
        _kernels._last_team(reset=True)
        model.fit(x, y, epochs=1, batch_size=128 if team else 32, verbose=0)
        assert (_kernels._last_team() != "none") == team
    finally:
        mn.set_num_threads(before)
