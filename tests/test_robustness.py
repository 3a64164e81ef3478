"""Robustness at the public boundary (issue 5): every bad input gets a clear error that names
the argument and the problem; nothing crashes, hangs, allocates what a forged file asks for,
or leaves a half-updated model.

The boundary: Model(...), fit, evaluate, predict, set_weights, load_mnist, mn.preset,
mn.set_num_threads, the MNISTNET_* environment variables and the CLI; Model.load's forged,
corrupt and special files are in test_model_files (which CI's sanitizer stage runs too).

Checked elsewhere and not repeated here: the basic set_weights errors
(test_model.test_set_weights_rejects_bad_input), non-zip / key-less / 200-byte-truncated model
files and a missing one (test_model.test_load_rejects_files_that_are_not_models), bad CLI
arguments, image files and model files (test_cli), every IDX header check and the IDX
fuzz test (test_data), and one of each concurrency case on identical models
(test_model.test_concurrent_predict_and_a_second_fit, test_two_models_train_in_two_threads).
The cases here extend those: both backends, every entry point, the all-or-nothing contract,
deterministic locking, and the cases those tests do not reach.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from interrupting import HAS_PTHREAD_KILL, sigint_lateness

import mnistnet as mn
from mnistnet import fast
from mnistnet.cli import main

BACKENDS = ("fast", "reference")
IN, HIDDEN, OUT = 6, 5, 3
RNG = np.random.default_rng(20240605)
X = RNG.random((40, IN), dtype=np.float32)
Y = RNG.integers(0, OUT, 40).astype(np.uint8)
X.flags.writeable = False  # shared by every test: nothing may write into it
Y.flags.writeable = False
MIB = 1 << 20


def net(backend: str = "fast", seed: int = 0, loss: str = "categorical_crossentropy",
        lr: float = 0.1) -> mn.Model:
    """6 -> Dense(5, relu) -> Dense(3, softmax) (or linear with mse)."""
    out = "softmax" if loss == "categorical_crossentropy" else "linear"
    return mn.Model([mn.Dense(HIDDEN, activation="relu"), mn.Dense(OUT, activation=out)],
                    input_dim=IN, loss=loss, optimizer=mn.SGD(lr), seed=seed, backend=backend)


def fitted(backend: str, x, y, **kwargs) -> tuple[mn.Model, mn.History]:
    model = net(backend)
    kwargs.setdefault("verbose", 0)
    kwargs.setdefault("batch_size", 8)
    return model, model.fit(x, y, **kwargs)


# Each entry point, called with (x, y): its name for x and for y in error messages.
def _fit(x, y):
    return net().fit(x, y, epochs=1, verbose=0)


def _predict(x, y):
    return net().predict(x)


def _evaluate(x, y):
    return net().evaluate(x, y)


def _validation(x, y):
    return net().fit(X, Y, epochs=1, verbose=0, validation_data=(x, y))


ENTRY_POINTS = {"fit": _fit, "predict": _predict, "evaluate": _evaluate,
                "validation": _validation}
X_NAME = {"fit": "x", "predict": "x", "evaluate": "x", "validation": r"validation_data\[0\]"}
Y_NAME = {"fit": "y", "evaluate": "y", "validation": r"validation_data\[1\]"}


@pytest.fixture
def restore_threads():
    """Put the kernels' thread count back to what the environment asked for."""
    yield
    mn.set_num_threads(int(os.environ.get("MNISTNET_NUM_THREADS", "0") or 0))


# =========================================================================== x dtype

@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_x_gives_the_float32_result(backend):
    x64, xv64 = X.astype(np.float64), X[:10].astype(np.float64)
    a, ha = fitted(backend, X, Y, epochs=2, validation_data=(X[:10], Y[:10]))
    b, hb = fitted(backend, x64, Y, epochs=2, validation_data=(xv64, Y[:10]))
    assert np.array_equal(a.params, b.params)
    assert ha.history == hb.history
    assert np.array_equal(a.predict(x64), a.predict(X))
    assert a.evaluate(x64, Y) == a.evaluate(X, Y)


def test_float64_x_is_converted_once():
    """fit on float64 x holds one float32 copy of it at a time, never a second one."""
    rng = np.random.default_rng(1)
    x64 = rng.random((20_000, 50))  # 8 MB; its float32 copy is 4 MB
    y = rng.integers(0, 3, 20_000)
    model = mn.Model([mn.Dense(3, activation="softmax")], input_dim=50,
                     loss="categorical_crossentropy")
    model.fit(x64[:10], y[:10], verbose=0)  # warm up first-call caches
    tracemalloc.start()
    try:
        model.fit(x64, y, epochs=3, batch_size=256, verbose=0)
        model.predict(x64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    copy = x64.nbytes // 2
    assert peak < copy + 2 * MIB, f"peak {peak / MIB:.1f} MiB for a {copy / MIB:.1f} MiB copy"


def test_float16_x_is_accepted():
    x16 = X.astype(np.float16)
    a, ha = fitted("fast", x16, Y, epochs=1)
    b, hb = fitted("fast", x16.astype(np.float32), Y, epochs=1)
    assert np.array_equal(a.params, b.params) and ha.history == hb.history
    out = a.predict(x16)
    assert out.dtype == np.float32 and np.array_equal(out, a.predict(x16.astype(np.float32)))


REJECTED_DTYPES = {
    "uint8": (lambda x: (x * 255).astype(np.uint8),
              r"integer dtype uint8 but the model's first layer is not Rescaling: add "
              r"mn\.Rescaling\(1/255\).*or divide by 255"),
    "int32": (lambda x: (x * 10).astype(np.int32), "integer dtype int32"),
    "int64": (lambda x: (x * 10).astype(np.int64), "integer dtype int64"),
    "bool": (lambda x: x > 0.5, "dtype bool"),
    "object": (lambda x: x.astype(object), "must hold floats, got dtype object"),
    "complex64": (lambda x: x.astype(np.complex64), "must hold floats, got dtype complex64"),
    "complex128": (lambda x: x.astype(np.complex128), "must hold floats, got dtype complex128"),
    "str": (lambda x: x.astype(str), "must hold floats, got dtype <U"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", REJECTED_DTYPES)
def test_x_dtype_is_rejected(dtype, entry):
    convert, message = REJECTED_DTYPES[dtype]
    with pytest.raises(TypeError, match=f"^{X_NAME[entry]} .*{message}"):
        ENTRY_POINTS[entry](convert(X), Y)


def test_ragged_lists_name_the_argument():
    """np.asarray's "inhomogeneous shape" error reaches the caller as is today, naming
    neither x nor y."""
    with pytest.raises(ValueError, match=r"^x "):
        net().predict([[0.5] * IN, [0.5] * (IN - 1)])
    with pytest.raises(ValueError, match=r"^y "):
        net().fit(X[:2], [[0, 1, 0], [1]], verbose=0)


def test_x_that_is_not_an_array_is_rejected():
    for bad in ("abc", None, 3.0, {"x": 1}):
        with pytest.raises(TypeError, match="x must be a numpy array, got"):
            net().predict(bad)


# =========================================================================== layout

def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _flags(a) -> tuple[bool, ...]:
    return (a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable, a.flags.aligned)


LAYOUTS = {
    "fortran": np.asfortranarray,
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "strided-rows": lambda a: np.repeat(a, 2, axis=0)[::2],
    "strided-cols": lambda a: np.repeat(a, 3, axis=1)[:, ::3],
    "reversed": lambda a: a[::-1].copy()[::-1],
    "read-only": _read_only,
    "read-only-fortran": lambda a: _read_only(np.asfortranarray(a)),
    "unaligned": _unaligned,
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_awkward_x_layouts_give_the_contiguous_result(layout, backend):
    x = LAYOUTS[layout](X)
    assert np.array_equal(x, X)
    assert not (x.flags.c_contiguous and x.flags.writeable and x.flags.aligned
                and x.dtype.isnative)
    before, flags = x.copy(), _flags(x)
    a, ha = fitted(backend, x, Y, epochs=2, validation_data=(x, Y))
    b, hb = fitted(backend, X, Y, epochs=2, validation_data=(X, Y))
    assert np.array_equal(a.params, b.params) and ha.history == hb.history
    assert np.array_equal(a.predict(x, batch_size=7), b.predict(X, batch_size=7))
    assert a.evaluate(x, Y) == b.evaluate(X, Y)
    assert np.array_equal(x, before) and _flags(x) == flags  # caller's array untouched


@pytest.mark.parametrize("layout", ["fortran", "strided-rows", "read-only", "big-endian"])
def test_awkward_y_layouts_give_the_contiguous_result(layout):
    one_hot = np.eye(OUT, dtype=np.float32)[Y]
    for y, plain in ((LAYOUTS[layout](one_hot), one_hot),
                     (LAYOUTS[layout](Y.astype(np.int32)), Y)):
        before = y.copy()
        a, _ = fitted("fast", X, y, epochs=1)
        b, _ = fitted("fast", X, plain, epochs=1)
        assert np.array_equal(a.params, b.params)
        assert np.array_equal(y, before)


# =========================================================================== shapes

BAD_X_SHAPES = {
    "too-few-columns": (lambda: X[:, :-1], r"has 5 columns but the model's input_dim is 6"),
    "too-many-columns": (lambda: np.hstack([X, X]), "has 12 columns but the model's input_dim"),
    "1-D": (lambda: X[0], r"must be 2-D \(n, 6\), got shape \(6,\)"),
    "3-D": (lambda: X[:, :, None], r"must be 2-D \(n, 6\), got shape \(40, 6, 1\)"),
    "0-D": (lambda: np.array(1.0, dtype=np.float32), r"must be 2-D \(n, 6\), got shape \(\)"),
    "no-columns": (lambda: np.zeros((40, 0), np.float32), "has 0 columns"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", BAD_X_SHAPES)
def test_bad_x_shape(case, entry):
    make, message = BAD_X_SHAPES[case]
    with pytest.raises(ValueError, match=f"^{X_NAME[entry]} {message}"):
        ENTRY_POINTS[entry](make(), Y)


BAD_Y = {
    "short": (lambda: Y[:-1], ValueError, "has 39 labels but x has 40 rows"),
    "long": (lambda: np.concatenate([Y, Y]), ValueError, "has 80 labels but x has 40 rows"),
    "negative": (lambda: np.where(Y == 0, -1, Y.astype(np.int64)), ValueError,
                 r"has labels outside 0\.\.2 \(min -1"),
    "n-classes": (lambda: np.where(Y == 0, OUT, Y), ValueError,
                  r"has labels up to 3 but the model has 3 outputs \(labels 0\.\.2\): its "
                  r"last layer needs 4 units"),
    "huge": (lambda: np.full(40, 2**62), ValueError, r"has labels up to 4611686018427387904 "),
    "one-hot-too-wide": (lambda: np.eye(OUT + 1)[Y], ValueError,
                         "is one-hot with 4 columns but the model has 3 outputs"),
    "one-hot-too-narrow": (lambda: np.eye(OUT)[Y][:, :2], ValueError,
                           "is one-hot with 2 columns but the model has 3 outputs"),
    "one-hot-short": (lambda: np.eye(OUT)[Y][:-1], ValueError, "has 39 rows but x has 40"),
    "one-hot-nan": (lambda: np.eye(OUT)[Y] * np.nan, ValueError, "contains NaN or Inf"),
    "one-hot-object": (lambda: np.eye(OUT)[Y].astype(object), TypeError,
                       "must be numeric, got dtype object"),
    "3-D": (lambda: np.eye(OUT)[Y][:, :, None], ValueError,
            r"must be labels \(n,\) or one-hot \(n, 3\), got shape \(40, 3, 1\)"),
    "scalar": (lambda: 1, ValueError, r"must be labels \(n,\) or one-hot \(n, 3\)"),
    "float-fractions": (lambda: Y + 0.5, TypeError, "as 1-D labels must hold integers"),
    "float-nan": (lambda: np.full(40, np.nan), TypeError, "as 1-D labels must hold integers"),
    "bool": (lambda: Y > 0, TypeError, "as 1-D labels must hold integers, got dtype bool"),
    "object": (lambda: Y.astype(object), TypeError, "must hold integers, got dtype object"),
    "str": (lambda: Y.astype(str), TypeError, "must hold integers, got dtype <U"),
}


@pytest.mark.parametrize("entry", Y_NAME)
@pytest.mark.parametrize("case", BAD_Y)
def test_bad_y(case, entry):
    make, error, message = BAD_Y[case]
    with pytest.raises(error, match=f"^{Y_NAME[entry]} .*{message}"):
        ENTRY_POINTS[entry](X, make())


def test_float_labels_holding_integers_are_accepted():
    a, _ = fitted("fast", X, Y.astype(np.float64), epochs=1)
    b, _ = fitted("fast", X, Y, epochs=1)
    assert np.array_equal(a.params, b.params)


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
def test_no_rows_is_an_error_for_fit_and_evaluate(entry):
    with pytest.raises(ValueError, match=r"^x has no rows"):
        ENTRY_POINTS[entry](X[:0], Y[:0])


def test_no_rows_of_validation_data_is_a_clear_error():
    """An empty validation set cannot be scored: say so, naming validation_data (today the
    fast backend fails inside a kernel with "probs is empty", the reference backend with
    ZeroDivisionError)."""
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"^validation_data\[0\] has no rows"):
            net(backend).fit(X, Y, verbose=0, validation_data=(X[:0], Y[:0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_on_no_rows_returns_an_empty_result(backend, dtype):
    out = net(backend).predict(np.zeros((0, IN), dtype=dtype))
    assert out.shape == (0, OUT) and out.dtype == np.float32


# =========================================================================== values

NONFINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("value", NONFINITE)
def test_nonfinite_x_is_rejected(value, entry):
    for where in [(0, 0), (39, 5), (17, 3)]:
        x = X.copy()
        x[where] = NONFINITE[value]
        with pytest.raises(ValueError, match=f"^{X_NAME[entry]} contains NaN or Inf"):
            ENTRY_POINTS[entry](x, Y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lr", [0.1, 1e30])
def test_nonfinite_x_leaves_the_model_as_it_was(backend, lr):
    """fit finds NaN/Inf in x as its epoch reads the rows: in the last row, so most of an
    epoch has trained when it is found (lr 0.1), or not at all, the loss having diverged
    first (lr 1e30). Either way a ValueError, and the model is as before the call."""
    model, _ = fitted(backend, X, Y, epochs=1)
    model.optimizer.learning_rate = lr
    before = (model.params.copy(), model.grads.copy(), model.history, model.epochs_trained)
    x = X.copy()
    x[-1, 3] = np.nan
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"^x contains NaN or Inf"):
            model.fit(x, Y, epochs=3, batch_size=4, shuffle=False, verbose=0)
    assert not [w for w in caught if "loss became" in str(w.message)]  # not reported twice
    assert np.array_equal(model.params, before[0])
    assert np.array_equal(model.grads, before[1])
    assert model.history is before[2]
    assert model.epochs_trained == before[3]


def test_float64_x_beyond_float32_range_is_rejected():
    x = X.astype(np.float64)
    x[3, 2] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "overflow in cast"
        with pytest.raises(ValueError, match=r"^x contains NaN or Inf"):
            net().predict(x)


BAD_BATCH_SIZES = [(0, ValueError, "must be >= 1, got 0"), (-1, ValueError, "must be >= 1"),
                   (1.5, TypeError, "must be an integer, got float"),
                   (True, TypeError, "must be an integer, got bool"),
                   ("3", TypeError, "must be an integer, got str"),
                   (None, TypeError, "must be an integer, got NoneType")]


@pytest.mark.parametrize("value, error, message", BAD_BATCH_SIZES)
def test_bad_batch_size(value, error, message):
    with pytest.raises(error, match=f"^batch_size {message}"):
        net().fit(X, Y, batch_size=value, verbose=0)
    with pytest.raises(error, match=f"^batch_size {message}"):
        net().predict(X, batch_size=value)


@pytest.mark.parametrize("value, error, message", [
    (-1, ValueError, "must be >= 0, got -1"), ("3", TypeError, "must be an integer, got str"),
    (2.0, TypeError, "must be an integer, got float"),
    (True, TypeError, "must be an integer, got bool")])
def test_bad_epochs(value, error, message):
    model = net()
    before = model.params.copy()
    with pytest.raises(error, match=f"^epochs {message}"):
        model.fit(X, Y, epochs=value, verbose=0)
    assert np.array_equal(model.params, before)


def test_zero_epochs_trains_nothing():
    model = net()
    before = model.params.copy()
    history = model.fit(X, Y, epochs=0, verbose=0)
    assert history.epoch == [] and history.history == {}
    assert np.array_equal(model.params, before)


BAD_LEARNING_RATES = [(0, ValueError, "must be a finite number > 0, got 0"),
                      (-1, ValueError, "must be a finite number > 0, got -1"),
                      (math.nan, ValueError, "must be a finite number > 0, got nan"),
                      (math.inf, ValueError, "must be a finite number > 0, got inf"),
                      (-math.inf, ValueError, "must be a finite number > 0, got -inf"),
                      ("0.1", TypeError, "must be a number, got str"),
                      (None, TypeError, "must be a number, got NoneType"),
                      (True, TypeError, "must be a number, got bool")]


@pytest.mark.parametrize("value, error, message", BAD_LEARNING_RATES)
def test_bad_learning_rate(value, error, message):
    with pytest.raises(error, match=f"^learning_rate {message}"):
        mn.SGD(value)
    if value is not None:  # preset's default: the recipe's rate
        with pytest.raises(error, match=f"^learning_rate {message}"):
            mn.preset("perceptron", learning_rate=value)


@pytest.mark.parametrize("value", [1e39, 1e300, 1e-50])
def test_learning_rate_float32_cannot_hold_is_rejected(value):
    """The kernels take the rate as float32: 1e39 becomes inf (one step makes every weight
    non-finite, which the NaN/Inf-loss check sees only after the update) and 1e-50 becomes 0
    (training silently does nothing). Both should be a ValueError naming learning_rate."""
    with pytest.raises(ValueError, match=r"^learning_rate "):
        mn.SGD(value)


UNKNOWN_NAMES = {
    "activation": (lambda v: mn.Dense(3, activation=v), "linear, sigmoid, relu, softmax, tanh"),
    "loss": (lambda v: mn.Model([mn.Dense(3)], input_dim=IN, loss=v),
             "mse, categorical_crossentropy"),
    "preset": (lambda v: mn.preset(v), ", ".join(mn.PRESETS)),
    "backend": (lambda v: mn.Model([mn.Dense(3)], input_dim=IN, backend=v), "fast, reference"),
}


@pytest.mark.parametrize("value", ["swish", "RELU", "", None, 3])
@pytest.mark.parametrize("what", UNKNOWN_NAMES)
def test_unknown_names_list_the_valid_ones(what, value):
    make, valid = UNKNOWN_NAMES[what]
    if (what, value) == ("loss", None):  # the default: the output's loss (see test_model)
        assert make(value).loss == "mse"
        return
    with pytest.raises(ValueError, match=f"^unknown {what} {value!r}; valid: {valid}$"):
        make(value)


@pytest.mark.parametrize("how", ["preset", "attribute"])
def test_unknown_backend_elsewhere(how):
    with pytest.raises(ValueError, match=r"^unknown backend 'gpu'; valid: fast, reference$"):
        if how == "preset":
            mn.preset("perceptron", backend="gpu")
        else:
            model = net()
            model.backend = "gpu"
    if how == "attribute":
        assert model.backend == "fast"


def test_unknown_backend_for_load_blames_the_argument_not_the_file(tmp_path):
    """Model.load(good_file, backend="gpu") says the *file* has a bad architecture today."""
    path = tmp_path / "good.npz"
    net().save(path)
    with pytest.raises(ValueError, match="unknown backend 'gpu'; valid: fast, reference") as e:
        mn.Model.load(path, backend="gpu")
    assert "bad architecture" not in str(e.value)


@pytest.mark.parametrize("out", ["linear", "sigmoid", "relu"])
def test_crossentropy_needs_a_softmax_output(out):
    with pytest.raises(ValueError, match=f"needs a softmax output layer, got '{out}'"):
        mn.Model([mn.Dense(4, activation="softmax"), mn.Dense(3, activation=out)],
                 input_dim=IN, loss="categorical_crossentropy")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"layers": []}, TypeError, "layers must be a non-empty list of layers"),
    ({"layers": mn.Dense(3)}, TypeError, "layers must be a non-empty list of layers"),
    ({"layers": [mn.Dense(3), "relu"]}, TypeError,
     r"layers\[1\] must be a layer \(Dense, Conv2D, MaxPool2D, Flatten, Dropout, \.\.\.\), "
     r"got str"),
    ({"input_dim": 0}, ValueError, "input_dim must be >= 1, got 0"),
    ({"input_dim": 6.0}, TypeError, "input_dim must be an integer, got float"),
    ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
    ({"optimizer": 0.1}, TypeError, "optimizer must be an SGD, Adam, AdamW or RMSprop, got float"),
])
def test_bad_model_arguments(kwargs, error, message):
    args = {"layers": [mn.Dense(3)], "input_dim": IN, **kwargs}
    with pytest.raises(error, match=f"^{message}"):
        mn.Model(args.pop("layers"), **args)


@pytest.mark.parametrize("units, error", [(0, ValueError), (-2, ValueError), (2.5, TypeError),
                                          ("8", TypeError), (True, TypeError)])
def test_bad_units(units, error):
    with pytest.raises(error, match=r"^units must be"):
        mn.Dense(units)


BAD_VALIDATION = {
    "array": (lambda: X, ValueError, r"^validation_data must be a tuple \(x_val, y_val\)"),
    "1-tuple": (lambda: (X,), ValueError, "^validation_data must be a tuple"),
    "3-tuple": (lambda: (X, Y, Y), ValueError, "^validation_data must be a tuple"),
    "string": (lambda: "xy", ValueError, "^validation_data must be a tuple"),
    "dict": (lambda: {"x": X, "y": Y}, ValueError, "^validation_data must be a tuple"),
    "narrow-x": (lambda: (X[:, :4], Y), ValueError,
                 r"^validation_data\[0\] has 4 columns but the model's input_dim is 6"),
    "wide-y": (lambda: (X, np.eye(4)[Y]), ValueError,
               r"^validation_data\[1\] is one-hot with 4 columns"),
    "short-y": (lambda: (X, Y[:5]), ValueError,
                r"^validation_data\[1\] has 5 labels but x has 40 rows"),
    "nan-x": (lambda: (np.full_like(X, np.nan), Y), ValueError,
              r"^validation_data\[0\] contains NaN or Inf"),
    "none-x": (lambda: (None, Y), TypeError, r"^validation_data\[0\] must be a numpy array"),
    "int-x": (lambda: ((X * 255).astype(np.uint8), Y), TypeError,
              r"^validation_data\[0\] has integer dtype uint8"),
}


@pytest.mark.parametrize("case", BAD_VALIDATION)
def test_bad_validation_data(case):
    make, error, message = BAD_VALIDATION[case]
    model = net()
    before = model.params.copy()
    with pytest.raises(error, match=message):
        model.fit(X, Y, epochs=1, verbose=0, validation_data=make())
    assert np.array_equal(model.params, before)  # checked before any training


@pytest.mark.parametrize("verbose", [5, -1, "1", None, 0.5])
def test_bad_verbose(verbose):
    with pytest.raises(ValueError, match=f"^verbose must be 0, 1 or 2, got {verbose!r}"):
        net().fit(X, Y, verbose=verbose)


# =========================================================================== edge cases

@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_larger_than_the_dataset_is_one_full_batch(backend):
    a, ha = fitted(backend, X, Y, epochs=2, batch_size=10_000)
    b, hb = fitted(backend, X, Y, epochs=2, batch_size=len(X))
    assert np.array_equal(a.params, b.params) and ha.history == hb.history
    assert len(ha.epoch) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_batch_larger_than_n(backend):
    model = net(backend)
    assert np.array_equal(model.predict(X, batch_size=10**6), model.predict(X))
    np.testing.assert_allclose(model.predict(X, batch_size=1), model.predict(X), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_row_fit_and_predict(backend):
    model, history = fitted(backend, X[:1], Y[:1], epochs=3, batch_size=32,
                            validation_data=(X[:1], Y[:1]))
    assert len(history.epoch) == 3 and np.isfinite(model.params).all()
    out = model.predict(X[:1])
    assert out.shape == (1, OUT) and np.isfinite(out).all()


# =========================================================================== set_weights

def _last(fn):
    """Make the *last* array bad: all-or-nothing means the valid ones before it are not
    written either."""
    return lambda ws: [w * 2 for w in ws[:-1]] + [fn(ws[-1])]


BAD_WEIGHTS = {
    "too-few": (lambda ws: ws[:-1], ValueError, "set_weights needs 4 arrays .*got 3"),
    "too-many": (lambda ws: [*ws, ws[-1]], ValueError, "set_weights needs 4 arrays .*got 5"),
    "none": (lambda ws: [w * 2 for w in ws[:-1]] + [None], TypeError,
             r"weights\[3\] must be floating point, got dtype object"),
    "bias-2-D": (_last(lambda w: w[None]), ValueError,
                 r"weights\[3\] has shape \(1, 3\), expected \(3,\)"),
    "bias-long": (_last(lambda w: np.append(w, 0)), ValueError,
                  r"weights\[3\] has shape \(4,\), expected \(3,\)"),
    "int": (_last(lambda w: w.astype(np.int64)), TypeError,
            r"weights\[3\] must be floating point, got dtype int64"),
    "bool": (_last(lambda w: w > 0), TypeError, r"weights\[3\] must be floating point"),
    "object": (_last(lambda w: w.astype(object)), TypeError,
               r"weights\[3\] must be floating point, got dtype object"),
    "complex": (_last(lambda w: w.astype(np.complex64)), TypeError,
                r"weights\[3\] must be floating point, got dtype complex64"),
    "str": (_last(lambda w: w.astype(str)), TypeError, r"weights\[3\] must be floating point"),
    "nan": (_last(lambda w: np.full_like(w, np.nan)), ValueError,
            r"weights\[3\] contains NaN or Inf"),
    "inf": (_last(lambda w: np.full_like(w, -np.inf)), ValueError,
            r"weights\[3\] contains NaN or Inf"),
    "beyond-float32": (_last(lambda w: np.full(w.shape, 1e300)), ValueError,
                       r"weights\[3\]"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_failed_set_weights_leaves_the_model_unchanged(case):
    make, error, message = BAD_WEIGHTS[case]
    model = net()
    before = model.params.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "overflow in cast"
        with pytest.raises(error, match=f"^{message}"):
            model.set_weights(make(model.get_weights()))
    assert np.array_equal(model.params, before)
    assert np.isfinite(model.params).all()


@pytest.mark.parametrize("layout", ["fortran", "read-only", "unaligned", "big-endian"])
def test_set_weights_accepts_any_float_layout(layout):
    source = net(seed=5)
    model = net()
    model.set_weights([LAYOUTS[layout](w) for w in source.get_weights()])
    assert np.array_equal(model.params, source.params)


# =========================================================================== IDX via load_mnist

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _dataset(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    arrays = (rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 10, 10),
              rng.integers(0, 256, (4, 28, 28)), rng.integers(0, 10, 4))
    for stem, array in zip(STEMS, arrays, strict=True):
        (folder / stem).write_bytes(_idx(array))
    return folder


FORGED = {
    "images-huge-dims": (0, struct.pack(">4B3I", 0, 0, 8, 3, 2**31 - 1, 2**16, 2**16),
                         "limit"),
    "labels-huge-dims": (1, struct.pack(">4BI", 0, 0, 8, 1, 2**32 - 1), "limit"),
    "images-claim-a-gib": (2, struct.pack(">4B3I", 0, 0, 8, 3, 2**20, 32, 32) + bytes(100),
                           "header says 1073741824 bytes of data but the file has 100"),
    "labels-wrong-magic": (3, b"\x08\x03\x00\x00" + bytes(4), "not an IDX file"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", FORGED)
def test_forged_idx_header_through_load_mnist(case, gz, tmp_path):
    folder = _dataset(tmp_path / "data")
    index, content, message = FORGED[case]
    target = folder / STEMS[index]
    target.unlink()
    if gz:
        target = target.with_name(target.name + ".gz")
        content = gzip.compress(content, mtime=0)
    target.write_bytes(content)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=message) as raised:
            mn.load_mnist(folder, download=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(target) in str(raised.value)
    assert time.perf_counter() - start < 5
    assert peak < 8 * MIB


def test_forged_idx_header_through_the_cli_is_one_line(tmp_path, capsys):
    folder = _dataset(tmp_path / "data")
    (folder / STEMS[0]).write_bytes(FORGED["images-huge-dims"][1])
    code = main(["train", "--layers", "10:softmax", "--loss", "categorical_crossentropy",
                 "--data", str(folder)])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("mnistnet: error: "), err
    assert STEMS[0] in err


def test_cli_train_with_a_batch_larger_than_the_dataset(tmp_path, capsys):
    folder = _dataset(tmp_path / "data")
    code = main(["train", "--layers", "10:softmax", "--loss", "categorical_crossentropy",
                 "--data", str(folder), "--epochs", "2", "--batch-size", "100000", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == "" and out.startswith("test accuracy: ")


# =========================================================================== interrupts

@pytest.mark.skipif(not HAS_PTHREAD_KILL, reason="POSIX signals")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_during_fit(backend, sigint_raises):
    """SIGINT 0.3 s into a multi-second epoch: KeyboardInterrupt reaches the caller at once,
    the weights are finite, the history holds only completed epochs, and the model can be
    trained again (the training lock was released)."""
    rng = np.random.default_rng(3)
    x = rng.random((200_000, 32), dtype=np.float32)
    y = rng.integers(0, 10, 200_000)
    model = mn.Model([mn.Dense(256, activation="relu"), mn.Dense(10, activation="softmax")],
                     input_dim=32, loss="categorical_crossentropy", backend=backend)
    late = sigint_lateness(model, lambda: model.fit(x, y, epochs=3, batch_size=1, verbose=0))
    assert late < 0.5, f"KeyboardInterrupt {late:.2f} s late"
    assert np.isfinite(model.params).all()
    assert model.history is not None
    assert len(model.history.epoch) == model.epochs_trained < 3
    assert all(len(v) == len(model.history.epoch) for v in model.history.history.values())
    assert not model._training.locked()
    again = model.fit(x[:100], y[:100], epochs=1, verbose=0)
    assert len(again.epoch) == 1


# =========================================================================== divergence

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lr", [100.0, 1e6])
def test_divergence_stops_with_a_warning_naming_epoch_and_batch(backend, lr):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    y = rng.standard_normal((400, 3)).astype(np.float32)
    model = mn.Model([mn.Dense(16, activation="relu"), mn.Dense(3)], input_dim=8, loss="mse",
                     optimizer=mn.SGD(lr), seed=0, backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            history = model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    ours = [str(w.message) for w in caught if "loss became" in str(w.message)]
    assert len(ours) == 1, ours  # stopped at once: one warning, not one per epoch
    assert all(w.category is RuntimeWarning for w in caught if "loss became" in str(w.message))
    epoch, batch = map(int, re.search(r"epoch (\d+), batch (\d+)", ours[0]).groups())
    assert epoch == len(history.epoch) + 1 and 1 <= batch <= 25
    assert len(history.epoch) < 5 and model.epochs_trained == len(history.epoch)
    assert np.isfinite(model.params).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_that_overflows_the_weights_is_not_applied(backend):
    """lr=3e38 is a valid float32: the loss of batch 1 is finite, so its update is applied
    and overflows every weight to Inf; batch 2's loss is then NaN and fit stops "before that
    update", but the model already holds non-finite weights. The step whose update would be
    non-finite must be refused like a non-finite loss."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((200, 5)) * 10).astype(np.float32)
    y = (rng.standard_normal((200, 3)) * 10).astype(np.float32)
    model = mn.Model([mn.Dense(3)], input_dim=5, loss="mse", optimizer=mn.SGD(3e38),
                     backend=backend)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert any(re.search(r"epoch 1, batch \d+", str(w.message)) for w in caught)
    assert len(history.epoch) < 3
    assert np.isfinite(model.params).all()


# =========================================================================== concurrency

def _run_threads(targets, timeout=120):
    errors = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_predict_with_mixed_chunk_sizes(backend, restore_threads):
    mn.set_num_threads(2)  # OpenMP regions from several Python threads at once
    rng = np.random.default_rng(5)
    x = rng.random((700, 64), dtype=np.float32)
    model = mn.Model([mn.Dense(128, activation="relu"), mn.Dense(10, activation="softmax")],
                     input_dim=64, loss="categorical_crossentropy", seed=1, backend=backend)
    chunks = (1, 7, 256, 10_000)
    expected = {c: model.predict(x, batch_size=c) for c in chunks}
    barrier = threading.Barrier(len(chunks))
    results: dict[int, list[bool]] = {c: [] for c in chunks}

    def worker(c):
        def run():
            barrier.wait(timeout=30)
            for _ in range(5):
                results[c].append(np.array_equal(model.predict(x, batch_size=c), expected[c]))
        return run

    _run_threads([worker(c) for c in chunks])
    assert all(len(r) == 5 and all(r) for r in results.values()), results


def test_different_models_fit_concurrently_as_they_do_alone(restore_threads):
    mn.set_num_threads(2)
    rng = np.random.default_rng(6)
    x = rng.random((3000, 32), dtype=np.float32)
    labels = rng.integers(0, 10, 3000)
    targets = rng.random((3000, 4), dtype=np.float32)

    def make():
        return [
            (mn.Model([mn.Dense(64, activation="relu"), mn.Dense(10, activation="softmax")],
                      input_dim=32, loss="categorical_crossentropy", seed=1), labels),
            (mn.Model([mn.Dense(48, activation="sigmoid"), mn.Dense(4, activation="linear")],
                      input_dim=32, loss="mse", optimizer=mn.SGD(0.05), seed=2), targets),
            (mn.Model([mn.Dense(16, activation="relu"), mn.Dense(10, activation="softmax")],
                      input_dim=32, loss="categorical_crossentropy", seed=3,
                      backend="reference"), labels),
        ]

    solo = []
    for model, y in make():
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        solo.append((model.params.copy(), history.history))
    together = make()
    histories = [None] * len(together)

    def trainer(i):
        def run():
            model, y = together[i]
            histories[i] = model.fit(x, y, epochs=2, batch_size=16, verbose=0).history
        return run

    _run_threads([trainer(i) for i in range(len(together))])
    for (model, _), history, (params, solo_history) in zip(together, histories, solo,
                                                           strict=True):
        assert np.array_equal(model.params, params)
        assert history == solo_history


class _GatedKernels:
    """The model's kernels, except that train_epoch waits for `release` (after setting
    `entered`): the first fit provably holds the training lock while the test acts."""

    def __init__(self, kernels, fail: bool = False) -> None:
        self.kernels = kernels
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    def train_epoch(self, *args):
        self.entered.set()
        assert self.release.wait(60), "the test never released the gate"
        if self.fail:
            raise RuntimeError("kernel failure injected by the test")
        return self.kernels.train_epoch(*args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_fit_while_training_is_refused(backend):
    model = net(backend)
    gate = model._kernels = _GatedKernels(model._kernels)
    outcome = {}
    first = threading.Thread(target=lambda: outcome.setdefault(
        "history", model.fit(X, Y, epochs=2, verbose=0)))
    first.start()
    try:
        assert gate.entered.wait(30), "the first fit never reached the kernels"
        assert model._training.locked()
        with pytest.raises(RuntimeError, match="already training"):
            model.fit(X, Y, epochs=1, verbose=0)
    finally:
        gate.release.set()
        first.join(timeout=60)
    assert len(outcome["history"].epoch) == 2
    model.backend = backend  # the real kernels again
    assert len(model.fit(X, Y, epochs=1, verbose=0).epoch) == 1


def test_training_lock_is_released_when_fit_fails():
    model = net()
    gate = model._kernels = _GatedKernels(model._kernels, fail=True)
    gate.release.set()
    with pytest.raises(RuntimeError, match="injected"):
        model.fit(X, Y, epochs=1, verbose=0)
    assert not model._training.locked()
    model.backend = "fast"
    assert len(model.fit(X, Y, epochs=1, verbose=0).epoch) == 1


# =========================================================================== threads, env

@pytest.mark.parametrize("value", [-1, "2", 2.5, True, 2**40, [2]])
def test_set_num_threads_rejects(value, restore_threads):
    before = mn.get_num_threads()
    with pytest.raises(ValueError, match=r"^number of threads must be an integer >= 0"):
        mn.set_num_threads(value)
    assert mn.get_num_threads() == before


def test_set_num_threads_zero_restores_all_cores(restore_threads):
    mn.set_num_threads(1)
    assert mn.get_num_threads() == 1
    mn.set_num_threads(0)
    if fast.openmp_enabled():
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count())
        assert mn.get_num_threads() == cores
    else:
        assert mn.get_num_threads() == 1
    mn.set_num_threads(None)
    assert mn.get_num_threads() == (cores if fast.openmp_enabled() else 1)


def _unsupported_simd() -> str | None:
    return next((p for p in fast.SIMD_PATHS if not fast.simd_supported(p)), None)


ENV_CASES = {
    "simd-bogus": ("MNISTNET_SIMD", "bogus", r"MNISTNET_SIMD=bogus.*avx2.*scalar"),
    "simd-upper-case": ("MNISTNET_SIMD", "AVX2", r"MNISTNET_SIMD=AVX2.*avx2.*scalar"),
    "simd-unsupported": ("MNISTNET_SIMD", _unsupported_simd(),
                         r"MNISTNET_SIMD=\w+.* not available.*available: .*scalar"),
    "threads-text": ("MNISTNET_NUM_THREADS", "abc", "MNISTNET_NUM_THREADS must be a whole"),
    "threads-negative": ("MNISTNET_NUM_THREADS", "-1", "MNISTNET_NUM_THREADS must be a whole"),
    "threads-fraction": ("MNISTNET_NUM_THREADS", "1.5", "MNISTNET_NUM_THREADS must be a whole"),
    "threads-huge": ("MNISTNET_NUM_THREADS", "99999999999999999999", "MNISTNET_NUM_THREADS"),
}


def _env(name: str, value: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTNET_")}
    env[name] = value
    return env  # PYTHONPATH passed through unchanged


@pytest.mark.parametrize("case", ENV_CASES)
def test_bad_environment_variable_fails_the_import_naming_it(case, tmp_path):
    name, value, message = ENV_CASES[case]
    if value is None:
        pytest.skip("this CPU and build support every SIMD path")
    result = subprocess.run([sys.executable, "-c", "import mnistnet"], cwd=tmp_path,
                            env=_env(name, value), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), result.stderr
    assert re.search(message, last), last


def test_bad_environment_variable_through_the_cli_is_one_line(tmp_path):
    """`MNISTNET_SIMD=bogus mnistnet info` prints an ImportError traceback today: the
    package raises while being imported, before cli.main can catch anything."""
    result = subprocess.run([sys.executable, "-m", "mnistnet", "info"], cwd=tmp_path,
                            env=_env("MNISTNET_SIMD", "bogus"), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnistnet: error: MNISTNET_SIMD=bogus"), \
        result.stderr
