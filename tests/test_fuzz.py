"""Hypothesis property tests (issue 5): the model loader on random and mutated bytes, and
random valid shapes through fit/predict on both backends.

The IDX reader has its own 2,000-example fuzz test in test_data.py
(test_read_idx_returns_an_array_or_raises_value_error); it is not repeated here.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mnistnet as mn

# ---------------------------------------------------------------------------- model files

MARKER = Path(tempfile.gettempdir()) / f"mnistnet-fuzz-pickle-ran-{os.getpid()}"


class PickleBomb:
    """Unpickling this creates MARKER: proof that the loader ran pickle code."""

    def __reduce__(self):
        return (open, (str(MARKER), "w"))


def _model_bytes(model: mn.Model) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        model.save(path)
        return path.read_bytes()


# Tiny valid files, written by Model.save: cheap to load, so thousands of examples run fast.
VALID_FILES = [
    _model_bytes(mn.Model([mn.Dense(2)], input_dim=3, seed=0)),
    _model_bytes(mn.Model([mn.Dense(2, activation="relu"), mn.Dense(2, activation="softmax")],
                          input_dim=3, loss="categorical_crossentropy", seed=1)),
]
with zipfile.ZipFile(io.BytesIO(VALID_FILES[0])) as _archive:
    MEMBERS = {name: _archive.read(name) for name in _archive.namelist()}
CONFIG = json.loads(str(np.load(io.BytesIO(MEMBERS["config.npy"]), allow_pickle=False)[()]))


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


# Replacement member contents: wrong types, shapes, values, versions, configs, pickles.
params = np.load(io.BytesIO(MEMBERS["params.npy"]), allow_pickle=False)
REPLACEMENTS = [
    b"",
    b"\x93NUMPY",
    b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (8,), }",
    pickle.dumps(PickleBomb()),
    _npy(np.array([PickleBomb()], dtype=object)),
    _npy(np.array(1)),
    _npy(np.array(2)),
    _npy(np.array(-1)),
    _npy(np.array(1.0)),
    _npy(np.array("1")),
    _npy(np.zeros(0, np.float32)),
    _npy(np.zeros(8, np.float32)),
    _npy(np.zeros(8, np.float64)),
    _npy(np.zeros((2, 4), np.float32)),
    _npy(np.full(8, np.nan, np.float32)),
    _npy(np.full(8, np.inf, np.float32)),
    _npy(params.astype(">f4")),
    _npy(np.array(json.dumps(CONFIG))),
    _npy(np.array(json.dumps({**CONFIG, "input_dim": 4}))),
    _npy(np.array(json.dumps({**CONFIG, "layers": [{"units": 3, "activation": "linear"}]}))),
    _npy(np.array(json.dumps({**CONFIG, "layers": [{"units": 2, "activation": "swish"}]}))),
    _npy(np.array(json.dumps({**CONFIG, "loss": "categorical_crossentropy"}))),
    _npy(np.array(json.dumps({**CONFIG, "input_dim": 10**12}))),
    _npy(np.array("[" * 50_000)),
    _npy(np.array("{}")),
]


@st.composite
def model_file_bytes(draw) -> bytes:
    """Random bytes, or a valid model file after one to three mutations."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=256))
    content = draw(st.sampled_from(VALID_FILES))
    for _ in range(draw(st.integers(1, 3))):
        content = _mutate(draw, content)
    return content


def _mutate(draw, content: bytes) -> bytes:
    data = bytearray(content)
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "append", "insert", "member",
                                 "member", "drop", "add"]))
    if kind == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data))):]
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "insert":
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=8))
    elif kind in ("member", "drop", "add"):
        return _rezip(draw, content, kind)
    return bytes(data)


def _rezip(draw, content: bytes, kind: str) -> bytes:
    """Rewrite the archive with one member replaced, dropped or added (the result is a
    well-formed zip, so the loader's own checks are what is tested)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
    except Exception:  # already broken by an earlier mutation (zipfile raises many types)
        return content
    if kind == "member" and members:
        name = draw(st.sampled_from(sorted(members)))
        members[name] = draw(st.one_of(st.sampled_from(REPLACEMENTS),
                                       st.binary(max_size=128)))
    elif kind == "drop" and members:
        del members[draw(st.sampled_from(sorted(members)))]
    else:
        name = draw(st.sampled_from(["extra.npy", "params.npy", "config", "x/../y.npy"]))
        members[name] = draw(st.sampled_from(REPLACEMENTS))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def fuzz_dir():
    MARKER.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)
    assert not MARKER.exists(), "the model loader ran pickle code"


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(content=model_file_bytes())
def test_model_load_returns_a_working_model_or_raises_value_error(fuzz_dir, content):
    path = fuzz_dir / "fuzzed.npz"
    path.write_bytes(content)
    try:
        model = mn.Model.load(path)
    except ValueError as exc:
        assert str(path) in str(exc), str(exc)
    else:
        assert np.isfinite(model.params).all()
        x = np.linspace(0, 1, 4 * model.input_dim, dtype=np.float32).reshape(4, -1)
        with np.errstate(over="ignore"):
            out = model.predict(x)
        assert out.shape == (4, model.n_outputs) and out.dtype == np.float32
        assert np.isfinite(out).all(), "a loaded model predicts NaN/Inf on inputs in [0, 1]"
    assert not MARKER.exists(), "the model loader ran pickle code"


# ---------------------------------------------------------------------------- fit/predict

ACTIVATIONS = ("linear", "sigmoid", "relu", "softmax", "tanh")


@st.composite
def training_runs(draw) -> dict:
    n_layers = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 40), min_size=n_layers, max_size=n_layers))
    loss = draw(st.sampled_from(["mse", "categorical_crossentropy"]))
    acts = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=n_layers, max_size=n_layers))
    if loss == "categorical_crossentropy":
        acts[-1] = "softmax"
    return {
        "input_dim": draw(st.integers(1, 40)),
        "layers": list(zip(widths, acts, strict=True)),
        "loss": loss,
        "n": draw(st.integers(1, 80)),
        "batch_size": draw(st.integers(1, 100)),
        "epochs": draw(st.integers(0, 2)),
        "one_hot": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "learning_rate": draw(st.sampled_from([0.01, 0.1])),
    }


def _data(run: dict) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(run["seed"])
    n, out = run["n"], run["layers"][-1][0]
    x = rng.uniform(-1, 1, (n, run["input_dim"])).astype(np.float32)
    labels = rng.integers(0, out, n)
    if not run["one_hot"]:
        return x, labels
    if run["loss"] == "mse":
        return x, rng.random((n, out), dtype=np.float32)  # any targets in [0, 1]
    return x, np.eye(out, dtype=np.float32)[labels]


def _train(run: dict, backend: str, x, y):
    model = mn.Model([mn.Dense(units, activation=act) for units, act in run["layers"]],
                     input_dim=run["input_dim"], loss=run["loss"], seed=run["seed"] % 1000,
                     optimizer=mn.SGD(run["learning_rate"]), backend=backend)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=run["epochs"], batch_size=run["batch_size"],
                            verbose=0)
    diverged = any("loss became NaN or Inf" in str(w.message) for w in caught)
    return model, history, diverged


@settings(max_examples=200, deadline=None)
@given(run=training_runs())
def test_random_shapes_fit_and_predict_agree_across_backends(run):
    x, y = _data(run)
    results = {}
    for backend in ("fast", "reference"):
        model, history, diverged = _train(run, backend, x, y)
        assert isinstance(history, mn.History)
        if diverged:
            assert len(history.epoch) < run["epochs"]
        else:
            assert len(history.epoch) == run["epochs"]
        assert all(len(v) == len(history.epoch) for v in history.history.values())
        assert np.isfinite(model.params).all()
        out = model.predict(x)
        assert out.shape == (run["n"], run["layers"][-1][0]) and out.dtype == np.float32
        if not diverged:
            assert np.isfinite(out).all()
        results[backend] = (model, history, diverged, out)
    (fm, fh, fd, fout), (rm, rh, rd, rout) = results["fast"], results["reference"]
    assert fd == rd and fh.epoch == rh.epoch
    if not fd:
        np.testing.assert_allclose(fout, rout, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(fm.params, rm.params, rtol=1e-3, atol=1e-4)
        for key in fh.history:
            np.testing.assert_allclose(fh.history[key], rh.history[key], rtol=1e-3, atol=1e-4)
