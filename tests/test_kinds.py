"""Every kind in the table (mnistnet.kinds.KINDS), end to end, with tests generated from the
table: a new kind that forgets a part fails a test by its name.

For each kind, on examples with awkward shapes (EXAMPLES below, which must cover every kind):
- its compiled kernel pair, as the step runs it (fast.layer_pair), equals its NumPy twin;
- that gradient agrees with central differences of the forward;
- a small model holding it trains to the same bits on one thread and on a team of two;
- it round-trips: layer -> plan row -> model file -> load -> ONNX -> C -> the CLI's grammar,
  and its peer models build and train (PyTorch, Keras) where the peers are installed
  (MNISTNET_PEERS_PYTHON names an interpreter that has them; MNISTNET_REQUIRE=peers makes
  their absence a failure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_export import (  # noqa: F401  (fixtures)
    Case,
    assert_matches,
    build,
    cc,
    exported_c,
    onnx_predict,
    onnx_session,
    ort,
    run_predict,
    skip_or_fail,
)
from tolerances import BACKWARD_RTOL, FLOAT32_GRAD_RTOL, FORWARD_RTOL, assert_close

import mnistnet as mn
from mnistnet import _kernels, bench, export, fast, reference
from mnistnet.kinds import KINDS, kind_of, layer_from_config, layer_to_config, parse_layer

# Each kind's examples: (layer, its input shape). Awkward on purpose: 1x1 and full-size
# windows, stride 2, "same" padding with odd and even windows, a window that does not divide
# its input, 1/3/7/33 channels.
EXAMPLES = {
    "Dense": [(mn.Dense(33, activation="relu"), (17,)), (mn.Dense(1), (5,)),
              (mn.Dense(7, activation="tanh"), (40,))],
    "Conv2D": [(mn.Conv2D(3, 3, strides=2, padding="same"), (7, 7, 3)),
               (mn.Conv2D(7, (2, 4), padding="same", activation="relu"), (6, 6, 1)),
               (mn.Conv2D(4, 1), (5, 4, 33)), (mn.Conv2D(2, 5), (5, 5, 2))],
    "MaxPool2D": [(mn.MaxPool2D(2), (6, 6, 3)),
                  (mn.MaxPool2D(3, strides=2, padding="same"), (7, 5, 7)),
                  (mn.MaxPool2D((3, 2), strides=1), (5, 4, 1))],
    "AveragePooling2D": [(mn.AveragePooling2D(2), (6, 6, 3)),
                         (mn.AveragePooling2D(3, strides=2, padding="same"), (7, 5, 7)),
                         (mn.AveragePooling2D((3, 2), strides=1), (5, 4, 1)),
                         (mn.AveragePooling2D(2, padding="same"), (5, 5, 33)),
                         (mn.AveragePooling2D((5, 5)), (5, 5, 2))],
    "GlobalAveragePooling2D": [(mn.GlobalAveragePooling2D(), (5, 7, 3)),
                               (mn.GlobalAveragePooling2D(), (1, 1, 33)),
                               (mn.GlobalAveragePooling2D(), (4, 4, 1))],
    "Flatten": [(mn.Flatten(), (3, 4, 5))],
    "Dropout": [(mn.Dropout(0.3), (40,)), (mn.Dropout(0.5), (4, 4, 3))],
    "Activation": [(mn.Activation("tanh"), (9,)), (mn.Activation("softmax"), (3, 3, 7)),
                   (mn.Activation("sigmoid"), (33,))],
    "RandomTranslation": [(mn.RandomTranslation(0.3, 0.3), (7, 7, 3)),
                          (mn.RandomTranslation((-0.5, 0.2), (0.1, 0.4), fill_value=0.5),
                           (5, 6, 1))],
    "BatchNormalization": [(mn.BatchNormalization(), (5, 5, 7)),
                           (mn.BatchNormalization(momentum=0.9, epsilon=0.01), (33,))],
    "Rescaling": [(mn.Rescaling(1 / 255), (9,)), (mn.Rescaling(-2.5, offset=0.75), (4, 4, 3))],
}
# Each kind in the CLI's --layers grammar: (text, the layer it means).
CLI = {
    "Dense": ("64:relu", mn.Dense(64, activation="relu")),
    "Conv2D": ("conv:8:3x5:tanh:stride=2:padding=same",
               mn.Conv2D(8, (3, 5), strides=2, padding="same", activation="tanh")),
    "MaxPool2D": ("pool:3:stride=2", mn.MaxPool2D(3, strides=2)),
    "AveragePooling2D": ("avgpool:2:padding=same", mn.AveragePooling2D(2, padding="same")),
    "GlobalAveragePooling2D": ("gap", mn.GlobalAveragePooling2D()),
    "Flatten": ("flatten", mn.Flatten()),
    "Dropout": ("dropout:0.25", mn.Dropout(0.25)),
    "Activation": ("act:tanh", mn.Activation("tanh")),
    "RandomTranslation": ("translate:0.1", mn.RandomTranslation(0.1, 0.1)),
    "BatchNormalization": ("bn", mn.BatchNormalization()),
    "Rescaling": ("rescale:1/127.5:-1", mn.Rescaling(1 / 127.5, offset=-1)),
}
CASES = [(kind.name, i) for kind in KINDS for i in range(len(EXAMPLES.get(kind.name, [None])))]
IDS = [f"{name}-{i}" for name, i in CASES]
KEY = (3, 1, 2)  # (seed, epoch, step) of the training step the pair runs in
LAYER = 1  # the kind's layer in model_with: after a layer with weights


def test_every_kind_has_examples_and_cli_text():
    names = {kind.name for kind in KINDS}
    assert set(EXAMPLES) == names, f"kinds without EXAMPLES: {names - set(EXAMPLES)}"
    assert set(CLI) == names, f"kinds without a CLI example: {names - set(CLI)}"


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def example(name: str, i: int):
    assert name in EXAMPLES, f"no EXAMPLES for the kind {name}: add some to tests/test_kinds.py"
    layer, shape = EXAMPLES[name][i]
    return layer_from_config(layer_to_config(layer)), shape  # a fresh copy


def model_with(name: str, i: int, seed: int = 0, loss: str = "mse") -> mn.Model:
    """[a layer with weights that keeps the shape, the kind's layer, Flatten if it gives
    images, Dense(3)]: the kind's layer has an input gradient and a gradient at its output."""
    layer, shape = example(name, i)
    # A Conv2D lead of its own activation: an Activation after one without would be handed
    # to it (Plan._hand_over_activations), leaving the kind's layer nothing to do.
    lead = (mn.Conv2D(shape[2], 1, activation="tanh") if len(shape) == 3
            else mn.Dense(shape[0]))
    layers = [lead, layer]
    if len(layer.output_shape(lead.output_shape(shape))) == 3:
        layers.append(mn.Flatten())
    layers.append(mn.Dense(3, activation="softmax" if loss != "mse" else "sigmoid"))
    model = mn.Model(layers, input_shape=shape, seed=seed, loss=loss)
    rng = rng_for("weights", name, i)
    for j, w in enumerate(model.get_weights()):  # varied biases, BN statistics away from 0/1
        if w.ndim == 1:
            model._views[j][...] = rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
    return model


def distinct_inputs(rng, shape) -> np.ndarray:
    """Values 0.05 apart at least, shuffled: no ties for a max, none created by a small
    step either (central differences step by 1e-2)."""
    n = int(np.prod(shape))
    values = (rng.permutation(n) - n / 2) * (0.05 if n < 400 else 0.02)
    return values.reshape(shape).astype(np.float32)


def buffers(plan, rows):
    _, n_acts, n_dacts = plan.buffer_sizes(rows)
    return (np.zeros(plan.n_params, np.float32), np.zeros(n_acts, np.float32),
            np.zeros(n_dacts, np.float32))


def pair(model, x, dout, training=True):
    grads, acts, dacts = buffers(model.plan, x.shape[0])
    return fast.layer_pair(model.plan, model.params, grads, acts, dacts, LAYER,
                           x.reshape(x.shape[0], -1), dout.reshape(dout.shape[0], -1),
                           KEY if training else None)


def twin_pair(model, x, dout, training=True):
    plan, kind = model.plan, model.plan.kinds[LAYER]
    key = reference.dropout_key(*KEY, LAYER) if kind.keyed else None
    grads = np.zeros_like(model.params)
    z, keep = kind.forward(plan, model.params, LAYER, x, training, key)
    out = reference._activation_forward(plan.table[LAYER]["act"], z.copy())
    if not training:
        return out, None
    dinp = kind.backward(plan, model.params, grads, LAYER, dout, x, keep)
    return out, dinp


@pytest.mark.parametrize("batch", [1, 7, 128])
@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_kernel_pair_matches_its_twin(name, i, batch, simd_path):
    model = model_with(name, i)
    rng = rng_for("pair", name, i, batch)
    shapes = model.plan.shapes
    x = rng.normal(size=(batch, *shapes[LAYER])).astype(np.float32)
    dout = rng.normal(size=(batch, *shapes[LAYER + 1])).astype(np.float32)
    for training in (True, False):
        got, got_dinp = pair(model, x, dout, training)
        want, want_dinp = twin_pair(model, x, dout, training)
        what = f"{name}[{i}] batch {batch} {'training' if training else 'inference'}"
        assert_close(got, want.reshape(batch, -1), FORWARD_RTOL, f"{what} forward")
        if training:
            assert_close(got_dinp, want_dinp.reshape(batch, -1), BACKWARD_RTOL,
                         f"{what} input gradient")


@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_input_gradient_matches_central_differences(name, i):
    """d sum(g * out) / d x, out the layer's output after its activation: the compiled
    pair's gradient (its kind's backward, then the activation's) against central
    differences of its own forward in training (the same masks and shifts every call)."""
    model = model_with(name, i)
    rng = rng_for("central", name, i)
    shapes = model.plan.shapes
    x = distinct_inputs(rng, (3, *shapes[LAYER]))
    g = rng.normal(size=(3, *shapes[LAYER + 1]))
    out, _ = pair(model, x, np.zeros(g.shape, np.float32))
    act = model.plan.table[LAYER]["act"]
    dz = reference._activation_backward(act, g.astype(np.float32),
                                        out.reshape(g.shape).copy())
    _, got = pair(model, x, dz)
    eps = 1e-2
    numeric = np.zeros(x.size)
    flat = x.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        up = np.sum(g.reshape(3, -1) * pair(model, x, dz)[0].astype(np.float64))
        flat[k] = saved - eps
        down = np.sum(g.reshape(3, -1) * pair(model, x, dz)[0].astype(np.float64))
        flat[k] = saved
        numeric[k] = (up - down) / (2 * eps)
    assert np.abs(got).max() > 1e-4, f"{name}[{i}]: the input gradient is ~0"
    assert_close(got.reshape(-1), numeric, 10 * FLOAT32_GRAD_RTOL,
                 f"{name}[{i}] input gradient vs central differences")


@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_one_thread_and_a_team_give_the_same_bits(name, i):
    rng = rng_for("threads", name, i)
    shape = EXAMPLES[name][i][1]
    x = rng.random((48, int(np.prod(shape))), dtype=np.float32)
    y = rng.integers(0, 3, 48)
    trained = []
    before = mn.get_num_threads()
    try:
        for threads, schedule in ((1, "serial"), (2, "team")):
            mn.set_num_threads(threads)
            _kernels._set_epoch_schedule(schedule)
            model = model_with(name, i, loss="categorical_crossentropy")
            model.optimizer = mn.Adam(0.01)
            model.optimizer_state = np.zeros(2 * model.plan.n_params, np.float32)
            model.fit(x, y, epochs=2, batch_size=16, verbose=0)
            trained.append(model.params.copy())
    finally:
        _kernels._set_epoch_schedule("auto")
        mn.set_num_threads(before)
    np.testing.assert_array_equal(trained[0], trained[1])
    assert not np.array_equal(trained[0], model_with(name, i).params), "nothing trained"


# ---- round trips ---------------------------------------------------------------------------

def case_for(name: str, i: int) -> Case:
    model = model_with(name, i)
    x = np.random.default_rng(1).random((64, model.input_dim), dtype=np.float32)
    return Case(f"kind_{name.lower()}_{i}", model, x)


@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_round_trip_through_the_plan_and_a_model_file(name, i, tmp_path):
    case = case_for(name, i)
    kind = kind_of(name)
    assert case.model.plan.table[LAYER]["kind"] == kind.code == _kernels.LayerKind[kind.enum]
    case.model.save(tmp_path / "model.npz")
    loaded = mn.Model.load(tmp_path / "model.npz")
    assert loaded.layers[LAYER] == case.model.layers[LAYER]
    assert type(loaded.layers[LAYER]) is kind.layer
    np.testing.assert_array_equal(loaded.predict(case.x), case.want)


@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_round_trip_through_onnx(name, i, ort, tmp_path):  # noqa: F811  (the fixture)
    case = case_for(name, i)
    session = onnx_session(ort, export.export_onnx(case.model, tmp_path / "model.onnx"))
    assert_matches(onnx_predict(session, case, case.x), case.want)


@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_round_trip_through_c(name, i, cc, tmp_path):  # noqa: F811  (the fixture)
    case = case_for(name, i)
    source, driver = exported_c(case, tmp_path)
    exe = build([*cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"],
                [source, driver], tmp_path / "predict")
    assert_matches(run_predict(exe, case), case.want)


@pytest.mark.parametrize("name", list(CLI))
def test_round_trip_through_the_cli_grammar(name):
    text, layer = CLI[name]
    parsed = parse_layer(text)
    assert type(parsed) is kind_of(name).layer and parsed == layer
    assert kind_of(name).token == text.split(":")[0] or name == "Dense"


# ---- the peers -----------------------------------------------------------------------------

PEER_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import peers
results = {}
for name, config in json.load(open(sys.argv[2])).items():
    shape = config["input_shape"]
    rng = np.random.default_rng(0)
    data = {"x_train": rng.random((32, int(np.prod(shape))), dtype=np.float32),
            "y_train": rng.integers(0, 3, 32), "x_test": rng.random((8, int(np.prod(shape))),
            dtype=np.float32), "y_test": rng.integers(0, 3, 8)}
    for framework, run in peers.RUNNERS.items():
        try:
            out = run(config, data, 1, 16, 1)
            results[f"{name}/{framework}"] = len(out["train_seconds"]) == 1
        except ImportError as exc:
            results[f"{name}/{framework}"] = f"unavailable: {exc}"
        except Exception as exc:
            results[f"{name}/{framework}"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def peer_results(tmp_path_factory):
    """Every example model built and trained one epoch by each peer, in one process of the
    peers' interpreter; {"<kind>-<i>/<framework>": True or why not}."""
    python = os.environ.get("MNISTNET_PEERS_PYTHON", sys.executable)
    folder = tmp_path_factory.mktemp("peers")
    configs = {f"{name}-{i}": bench.peer_config(model_with(name, i), 32, 16, 1)
               for name, i in CASES}
    (folder / "configs.json").write_text(json.dumps(configs))
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    done = subprocess.run([python, "-c", PEER_SCRIPT, str(Path(bench.__file__).parent),
                           str(folder / "configs.json")], capture_output=True, text=True,
                          timeout=900, env=env, check=False)
    if done.returncode != 0:
        pytest.fail(f"the peers' interpreter {python} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize(("name", "i"), CASES, ids=IDS)
def test_round_trip_to_the_peers(name, i, framework, peer_results):
    if kind_of(name).torch is None and framework == "torch":
        pytest.skip(f"PyTorch has no counterpart of {name}")
    result = peer_results[f"{name}-{i}/{framework}"]
    if isinstance(result, str) and result.startswith("unavailable"):
        skip_or_fail("peers", f"{framework} is not installed for the peers ({result}); set "
                              "MNISTNET_PEERS_PYTHON to an interpreter that has it")
    assert result is True, f"{framework} could not build or train {name}[{i}]: {result}"
