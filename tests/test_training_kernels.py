"""The kernels of issue 11 against their NumPy twins, central differences and steps worked out
by hand: RMSprop, AdamW, L2 regularisation, BatchNormalization and RandomTranslation; then
BatchNormalization and RandomTranslation in the epoch: the same bits at 1 and 2 threads and
across runs, and a predict that does not depend on its batch.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from gradcheck import central_differences, check_gradient
from tolerances import BACKWARD_RTOL, FLOAT32_GRAD_RTOL, FORWARD_RTOL, assert_close

import mnistnet as mn
from mnistnet import _kernels, fast, reference
from mnistnet.plan import Plan

BACKENDS = (fast, reference)
IDS = ("fast", "reference")
# Element counts: 1, odd, not a multiple of any SIMD width, and large.
SIZES = (1, 7, 33, 1000, 100_003)


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---- RMSprop and AdamW ------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True),
                                               (0.5, True)])
def test_rmsprop_matches_reference(n, momentum, centered):
    rng = rng_for("rmsprop", n, momentum, centered)
    w, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    a = (0.1 * rng.normal(size=n)).astype(np.float32) if centered else None
    # As training keeps it: the average of squares at least the squared average.
    v = rng.random(n, dtype=np.float32) + (a * a if centered else 0)
    m = rng.normal(size=n).astype(np.float32) if momentum else None
    out = {}
    for backend in BACKENDS:
        args = [x.copy() if x is not None else None for x in (w, g, v, a, m)]
        backend.rmsprop_update(*args, 0.01, 0.9, momentum, 1e-7)
        out[backend] = args
    for i, name in enumerate(("params", "grads", "velocity", "average", "momentum")):
        if out[fast][i] is not None:
            assert_close(out[fast][i], out[reference][i], FORWARD_RTOL,
                         f"rmsprop n={n} momentum={momentum} centered={centered} {name}")
    assert not np.array_equal(out[fast][0], w)


@pytest.mark.parametrize("n", SIZES)
def test_adamw_matches_reference(n):
    rng = rng_for("adamw", n)
    w, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    m, v = rng.normal(size=n).astype(np.float32), rng.random(n, dtype=np.float32)
    out = {}
    for backend in BACKENDS:
        args = [x.copy() for x in (w, g, m, v)]
        backend.adamw_update(*args, 0.01, 0.9, 0.999, 1e-7, 3, 0.004)
        out[backend] = args
    for i, name in enumerate(("params", "grads", "m", "v")):
        assert_close(out[fast][i], out[reference][i], FORWARD_RTOL, f"adamw n={n} {name}")


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_rmsprop_step_worked_by_hand(backend):
    # rho 0.75, g = 2: velocity = 0.25 * 4 = 1; step = 0.125 * 2 / sqrt(1 + 1e-7) ~ 0.25.
    w, g, v = (np.array([1.0], np.float32), np.array([2.0], np.float32),
               np.zeros(1, np.float32))
    backend.rmsprop_update(w, g, v, None, None, 0.125, 0.75, 0.0, 1e-7)
    assert v[0] == 1.0
    assert w[0] == pytest.approx(0.75, abs=1e-6)
    # Centered, with momentum 0.5 from a moment of 0.2: average = 0.25 * 2 = 0.5,
    # denominator = 1 - 0.25 (+eps), step = 0.25 / sqrt(0.75); moment = 0.1 + step.
    w, v, a, m = (np.array([1.0], np.float32), np.zeros(1, np.float32),
                  np.zeros(1, np.float32), np.array([0.2], np.float32))
    backend.rmsprop_update(w, g, v, a, m, 0.125, 0.75, 0.5, 1e-7)
    assert a[0] == 0.5
    assert m[0] == pytest.approx(0.1 + 0.25 / np.sqrt(0.75), rel=1e-6)
    assert w[0] == pytest.approx(1 - (0.1 + 0.25 / np.sqrt(0.75)), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_adamw_step_worked_by_hand(backend):
    # weight decay 0.1 at lr 0.5: w = 2 - 2 * 0.1 * 0.5 = 1.9; with g = 0 Adam moves nothing.
    w, m, v = np.array([2.0], np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)
    backend.adamw_update(w, np.zeros(1, np.float32), m, v, 0.5, 0.9, 0.999, 1e-7, 1, 0.1)
    assert w[0] == pytest.approx(1.9, rel=1e-7)
    # Adam's first step moves by ~lr * sign(g): m = 0.1 g, v = 0.001 g^2, alpha = lr *
    # sqrt(0.001) / 0.1, so m alpha / sqrt(v) = lr.
    w, m, v = np.array([2.0], np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)
    backend.adamw_update(w, np.array([3.0], np.float32), m, v, 0.5, 0.9, 0.999, 1e-7, 1, 0.1)
    assert w[0] == pytest.approx(1.9 - 0.5, rel=1e-5)


# ---- RandomTranslation --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 2), (2, 28, 28, 1), (4, 9, 4, 17)])
def test_translate_matches_reference(shape):
    rng = rng_for("translate", shape)
    x = rng.normal(size=shape).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    b, h, w = shape[:3]
    dy = rng.integers(-h - 1, h + 2, b)  # some shifts move the whole image out
    dx = rng.integers(-w - 1, w + 2, b)
    got = fast.translate_forward(None, x, dy, dx, 0.25)
    np.testing.assert_array_equal(got, reference.translate_forward(None, x, dy, dx, 0.25))
    np.testing.assert_array_equal(fast.translate_backward(None, g, dy, dx),
                                  reference.translate_backward(None, g, dy, dx))
    # The backward is the forward's adjoint: <T x, g> = <x, T* g>.
    zero_fill = fast.translate_forward(None, x, dy, dx, 0.0)
    assert np.sum(zero_fill * g, dtype=np.float64) == pytest.approx(
        np.sum(x * fast.translate_backward(None, g, dy, dx), dtype=np.float64), rel=1e-5)


def test_translate_shifts_match_reference_and_cover_the_range():
    key = reference.dropout_key(7, 1, 2, 0)
    dy, dx = fast.translate_shifts(key, 2000, -3, 2, -1, 4)
    ry, rx = reference.translate_shifts(key, 2000, -3, 2, -1, 4)
    np.testing.assert_array_equal(dy, ry)
    np.testing.assert_array_equal(dx, rx)
    assert set(dy.tolist()) == set(range(-3, 3)) and set(dx.tolist()) == set(range(-1, 5))


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_translate_worked_by_hand(backend):
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    # Down 1, left 1: out[h, w] = x[h - 1, w + 1], fill -1.
    out = backend.translate_forward(None, x, [1], [-1], -1.0)
    np.testing.assert_array_equal(out[0, :, :, 0], [[-1, -1, -1], [2, 3, -1], [5, 6, -1]])
    back = backend.translate_backward(None, out * 0 + 1, [1], [-1])
    np.testing.assert_array_equal(back[0, :, :, 0], [[0, 1, 1], [0, 1, 1], [0, 0, 0]])


# ---- BatchNormalization -------------------------------------------------------------------------

BN_SHAPES = [(1, 1), (2, 1), (3, 7), (5, 33), (64, 65), (7, 4, 4, 17), (129, 3, 3, 70)]


def bn64(x, gamma, beta, eps):
    """BatchNormalization in training, float64, written out."""
    c = x.shape[-1]
    flat = x.reshape(-1, c)
    mean = flat.mean(axis=0)
    var = ((flat - mean) ** 2).mean(axis=0)
    return (gamma * (flat - mean) / np.sqrt(var + eps) + beta).reshape(x.shape)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_matches_reference(shape):
    rng = rng_for("bn", shape)
    c = shape[-1]
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    gamma, beta = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    got = fast.batchnorm_forward(None, None, None, None, None, x, gamma, beta, 1e-3)
    want = reference.batchnorm_forward(None, None, None, None, None, x, gamma, beta, 1e-3)
    for a, b, name in zip(got, want, ("out", "xhat", "mean", "var", "invstd"), strict=True):
        assert_close(a, b, FORWARD_RTOL, f"batchnorm_forward {shape} {name}")
    xhat, invstd = want[1], want[4]
    got = fast.batchnorm_backward(None, None, None, g, xhat, gamma, invstd)
    want = reference.batchnorm_backward(None, None, None, g, xhat, gamma, invstd)
    for a, b, name in zip(got, want, ("dinp", "dgamma", "dbeta"), strict=True):
        assert_close(a, b, BACKWARD_RTOL, f"batchnorm_backward {shape} {name}")
    mm, mv = rng.normal(size=c).astype(np.float32), rng.random(c, dtype=np.float32)
    assert_close(fast.batchnorm_inference(None, x, gamma, beta, mm, mv, 1e-3),
                 reference.batchnorm_inference(None, x, gamma, beta, mm, mv, 1e-3),
                 FORWARD_RTOL, f"batchnorm_inference {shape}")


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 2, 2)])
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_batchnorm_gradient_matches_central_differences(shape, backend):
    rng = rng_for("bn grad", shape)
    c = shape[-1]
    x, g = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    f32 = np.float32
    _, xhat, _, _, invstd = backend.batchnorm_forward(
        None, None, None, None, None, x.astype(f32), gamma.astype(f32), beta.astype(f32),
        1e-3)
    dinp, dgamma, dbeta = backend.batchnorm_backward(None, None, None, g.astype(f32), xhat,
                                                     gamma.astype(f32), invstd)

    def loss(x, gamma, beta):
        return float(np.sum(bn64(x, gamma, beta, 1e-3) * g))

    what = f"{backend.__name__} batchnorm {shape}"
    check_gradient(dinp, central_differences(lambda v: loss(v, gamma, beta), x),
                   FLOAT32_GRAD_RTOL, what + " dinp")
    check_gradient(dgamma, central_differences(lambda v: loss(x, v, beta), gamma),
                   FLOAT32_GRAD_RTOL, what + " dgamma")
    check_gradient(dbeta, central_differences(lambda v: loss(x, gamma, v), beta),
                   FLOAT32_GRAD_RTOL, what + " dbeta")


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_batchnorm_worked_by_hand(backend):
    # x = [1, 3]: mean 2, var 1, invstd 1 / sqrt(1 + eps); gamma 2, beta 1.
    x = np.array([[1.0], [3.0]], np.float32)
    one = np.ones(1, np.float32)
    out, xhat, mean, var, invstd = backend.batchnorm_forward(
        None, None, None, None, None, x, 2 * one, one, 1e-3)
    s = 1 / np.sqrt(1.001)
    assert (mean[0], var[0]) == (2.0, 1.0)
    assert invstd[0] == pytest.approx(s, rel=1e-7)
    np.testing.assert_allclose(out[:, 0], [1 - 2 * s, 1 + 2 * s], rtol=1e-6)
    # dout = [1, 0]: dbeta = 1, dgamma = -s, dinp = (2 s / 2) ((2 dout - 1) - xhat dgamma).
    dinp, dgamma, dbeta = backend.batchnorm_backward(None, None, None,
                                                     np.array([[1.0], [0.0]], np.float32),
                                                     xhat, 2 * one, invstd)
    assert dbeta[0] == 1.0 and dgamma[0] == pytest.approx(-s, rel=1e-6)
    # (A difference of numbers near 1 that is ~1e-3: float32 leaves ~1e-7 absolute.)
    np.testing.assert_allclose(dinp[:, 0], s * (np.array([1, -1]) + s * s * np.array([-1, 1])),
                               rtol=0, atol=1e-7)
    # Predict: the moving averages normalise.
    got = backend.batchnorm_inference(None, x, 2 * one, one, 2 * one, 4 * one, 1e-3)
    np.testing.assert_allclose(got[:, 0], 1 + 2 * (x[:, 0] - 2) / np.sqrt(4.001), rtol=0,
                               atol=1e-7)


# ---- a small net with every new layer and L2, end to end through train_step ----------------

SEED, EPOCH, STEP = 5, 2, 9
LR = np.float32(0.25)
L2_CONV, L2_DENSE = 0.01, 0.05


def small_net() -> Plan:
    """RandomTranslation, an L2-regularised conv, BatchNormalization over its channels, a
    sigmoid on its own, Flatten, BatchNormalization over features, an L2-regularised dense
    softmax layer: smooth everywhere (no relu kinks, no max-pool ties)."""
    return Plan([mn.RandomTranslation(0.3, 0.3),
                 mn.Conv2D(3, 2, activation="linear",
                           kernel_regularizer=mn.regularizers.L2(L2_CONV)),
                 mn.BatchNormalization(), mn.Activation("sigmoid"), mn.Flatten(),
                 mn.BatchNormalization(momentum=0.9),
                 mn.Dense(3, activation="softmax",
                          kernel_regularizer=mn.regularizers.L2(L2_DENSE))], (4, 4, 1))


def net_loss64(plan, params, x, y):
    """small_net's batch-mean cross-entropy plus its L2 penalty, float64, written out."""
    n = x.shape[0]
    key = reference.dropout_key(SEED, EPOCH, STEP, 0)
    dy, dx = reference.translate_shifts(key, n, *(int(plan.table[0][f]) for f in (
        "shift_h0", "shift_h1", "shift_w0", "shift_w1")))
    a = reference._shifted(x.reshape(n, 4, 4, 1), dy, dx, 0.0)
    wc, bc = plan.layer_weights(params, 1)
    wc4 = wc.reshape(2, 2, 1, 3)
    a = np.stack([np.einsum("bhwc,hwco->bo", a[:, i:i + 2, j:j + 2, :], wc4)
                  for i in range(3) for j in range(3)], axis=1).reshape(n, 3, 3, 3) + bc

    def bn(a, i):
        off, c = int(plan.table[i]["param"]), int(plan.table[i]["out_c"])
        return bn64(a, params[off: off + c], params[off + c: off + 2 * c], 1e-3)

    a = 1 / (1 + np.exp(-bn(a, 2)))
    a = bn(a.reshape(n, -1), 5)
    wd, bd = plan.layer_weights(params, 6)
    z = a @ wd + bd
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ce = -np.mean(np.sum(y * np.log(np.clip(p, 1e-7, 1 - 1e-7)), axis=1))
    return ce + L2_CONV * np.sum(wc ** 2) + L2_DENSE * np.sum(wd ** 2)


def _buffers(plan, rows):
    _, n_acts, n_dacts = plan.buffer_sizes(rows)
    return np.zeros(plan.n_params, np.float32), np.zeros(n_acts, np.float32), np.zeros(
        n_dacts, np.float32)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_small_net_gradient_matches_central_differences(simd_path, backend):
    plan = small_net()
    rng = rng_for("small net")
    model = mn.Model(plan.layers, input_shape=plan.input_shape, loss="categorical_crossentropy",
                     seed=4)
    params = model.params.copy()
    # Not BN's initial gamma = 1, beta = 0: gradients through a generic scale and shift.
    for i in (2, 5):
        off, c = int(plan.table[i]["param"]), int(plan.table[i]["out_c"])
        params[off: off + 2 * c] = rng.normal(size=2 * c)
        params[off + 2 * c: off + 4 * c] = rng.random(2 * c) + 0.5  # moving statistics
    x = rng.random((6, 16), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)]
    numeric = central_differences(
        lambda p: net_loss64(plan, p, x.astype(np.float64), y.astype(np.float64)),
        params.astype(np.float64))
    grads, acts, dacts = _buffers(plan, 6)
    before = params.copy()
    value = backend.train_step(plan, params, grads, np.zeros(0, np.float32), acts, dacts,
                               reference.LOSSES["categorical_crossentropy"], x, y,
                               mn.SGD().kernel_settings(), LR, 0, (SEED, EPOCH, STEP))
    what = f"{backend.__name__}.train_step[{simd_path}] small net"
    assert_close(value, net_loss64(plan, before.astype(np.float64), x.astype(np.float64),
                                   y.astype(np.float64)), FORWARD_RTOL, what + " loss")
    for i, row in enumerate(plan.table):
        if row["param"] < 0:
            continue
        off, n_train = int(row["param"]), int(row["n_train"])
        check_gradient(grads[off: off + n_train], numeric[off: off + n_train],
                       FLOAT32_GRAD_RTOL, f"{what} layer {i} ({plan.layers[i]!r})")
        trained = slice(off, off + n_train)
        np.testing.assert_array_equal(params[trained], before[trained] - LR * grads[trained],
                                      err_msg=what + " update")
        if plan.kinds[i].layer is mn.BatchNormalization:
            np.testing.assert_array_equal(grads[off + n_train: off + int(row["n_param"])], 0)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_batchnorm_moving_averages_after_a_step(backend):
    plan = Plan([mn.BatchNormalization(momentum=0.75), mn.Dense(2, activation="softmax")],
                (3,))
    model = mn.Model(plan.layers, input_dim=3, loss="categorical_crossentropy", seed=0)
    params = model.params.copy()
    x = np.array([[1, 2, 3], [3, 2, -1]], np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1]]
    grads, acts, dacts = _buffers(plan, 2)
    backend.train_step(plan, params, grads, np.zeros(0, np.float32), acts, dacts,
                       reference.LOSSES["categorical_crossentropy"], x, y,
                       mn.SGD().kernel_settings(), LR, 0, (0, 0, 0))
    # Moving mean: 0 * 0.75 + [2, 2, 1] * 0.25; moving variance: 1 * 0.75 + [1, 0, 4] * 0.25.
    np.testing.assert_allclose(params[6:9], [0.5, 0.5, 0.25], rtol=1e-7)
    np.testing.assert_allclose(params[9:12], [1.0, 0.75, 1.75], rtol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_l2_step_worked_by_hand(backend):
    # Dense(1) linear, MSE, x = 1, y = 0, w = 0.5, b = 0, l2 = 0.1: loss = 0.25 + 0.1 * 0.25;
    # dw = 2 * 0.5 + 2 * 0.1 * 0.5 = 1.1, db = 1; SGD 0.1: w = 0.39, b = -0.1.
    model = mn.Model([mn.Dense(1, kernel_regularizer=mn.regularizers.L2(0.1))], input_dim=1,
                     loss="mse", optimizer=mn.SGD(0.1), backend=backend.__name__.split(".")[-1])
    model.set_weights([np.array([[0.5]]), np.array([0.0])])
    history = model.fit(np.ones((1, 1)), np.zeros((1, 1)), epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(0.275, rel=1e-6)
    kernel, bias = model.get_weights()
    assert kernel[0, 0] == pytest.approx(0.39, rel=1e-6)
    assert bias[0] == pytest.approx(-0.1, rel=1e-6)
    # Evaluated after the step: (0.39 - 0.1)^2 + 0.1 * 0.39^2.
    assert model.evaluate(np.ones((1, 1)), np.zeros((1, 1)))["loss"] == pytest.approx(
        0.29 ** 2 + 0.1 * 0.39 ** 2, rel=1e-5)


# ---- in the epoch: threads, runs, predict -------------------------------------------------------

def augmented_model(backend="fast", seed=0, optimizer=None):
    return mn.Model([mn.RandomTranslation(0.15, 0.15), mn.Conv2D(6, 3),
                     mn.BatchNormalization(), mn.Activation("relu"), mn.MaxPool2D(2),
                     mn.Flatten(), mn.Dense(16), mn.BatchNormalization(),
                     mn.Activation("relu"), mn.Dense(10, activation="softmax")],
                    input_shape=(14, 14, 1), loss="categorical_crossentropy",
                    optimizer=optimizer or mn.Adam(0.003), seed=seed, backend=backend)


def _data(n=600):
    rng = rng_for("augmented data")
    return rng.random((n, 14, 14, 1), dtype=np.float32), rng.integers(0, 10, n)


@pytest.fixture
def epoch_schedule():
    yield _kernels._set_epoch_schedule
    _kernels._set_epoch_schedule("auto")


def test_batchnorm_and_translation_same_bits_at_1_and_2_threads_and_across_runs(
        epoch_schedule):
    x, y = _data()
    runs = {}
    for name, threads, schedule in (("serial", 1, "serial"), ("team", 2, "team"),
                                    ("team again", 2, "team"), ("auto", 2, "auto")):
        previous = mn.get_num_threads()
        mn.set_num_threads(threads)
        epoch_schedule(schedule)
        try:
            model = augmented_model()
            model.fit(x, y, epochs=2, batch_size=25, verbose=0)  # the last batch is short
            if schedule == "team":
                assert _kernels._last_team() == "rows"
        finally:
            mn.set_num_threads(previous)
        runs[name] = model.params.copy()
    for name in ("team", "team again", "auto"):
        np.testing.assert_array_equal(runs[name], runs["serial"], err_msg=name)
    assert not np.array_equal(runs["serial"], augmented_model().params)


def test_batchnorm_and_translation_fast_matches_reference():
    x, y = _data(96)
    params = {}
    for backend in ("fast", "reference"):
        model = augmented_model(backend, optimizer=mn.SGD(0.05))
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        params[backend] = model.params
    assert_close(params["fast"], params["reference"], 1e-4, "augmented net, 3 SGD steps")


def test_predict_does_not_depend_on_the_batch():
    x, y = _data(200)
    model = augmented_model()
    model.fit(x, y, epochs=1, batch_size=50, verbose=0)
    full = model.predict(x)
    for batch_size in (1, 7, 64):
        np.testing.assert_array_equal(model.predict(x, batch_size=batch_size), full)
    np.testing.assert_array_equal(model.predict(x[13:14]), full[13:14])
    np.testing.assert_array_equal(model.predict(x[::-1])[::-1], full)


def test_translation_is_off_in_predict():
    rng = rng_for("translation off")
    x = rng.random((20, 8, 8, 1), dtype=np.float32)
    with_shift = mn.Model([mn.RandomTranslation(0.5, 0.5), mn.Flatten(), mn.Dense(3)],
                          input_shape=(8, 8, 1), seed=1)
    without = mn.Model([mn.Flatten(), mn.Dense(3)], input_shape=(8, 8, 1), seed=1)
    without.set_weights(with_shift.get_weights())
    np.testing.assert_array_equal(with_shift.predict(x), without.predict(x))


def test_bad_batchnorm_momentum_and_l2_are_named():
    with pytest.raises(ValueError, match="momentum must lie in"):
        mn.BatchNormalization(momentum=1.0)
    with pytest.raises(ValueError, match="momentum must lie in"):
        mn.BatchNormalization(momentum=-0.1)
    with pytest.raises(ValueError, match="l2 must be"):
        mn.regularizers.L2(-1e-4)
    with pytest.raises(ValueError, match="momentum must lie in"):
        mn.RMSprop(momentum=1.0)
    with pytest.raises(ValueError, match="momentum must lie in"):
        mn.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="fill_mode"):
        mn.RandomTranslation(0.1, 0.1, fill_mode="reflect")


@pytest.mark.parametrize("widths", [(1, 1), (7, 33), (20, 64), (33, 100)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_l2_training_matches_reference(widths, optimizer):
    # Awkward widths, and 64 and 100 outputs: SGD's update fused into the GEMM is off for a
    # regularised kernel, whatever its width.
    rng = rng_for("l2 training", widths, optimizer)
    x = rng.random((90, 13), dtype=np.float32)
    y = rng.integers(0, 3, 90)
    params = {}
    for backend in ("fast", "reference"):
        opt = {"sgd": mn.SGD(0.1), "adam": mn.Adam(0.01), "rmsprop": mn.RMSprop(0.01)}
        layers = [mn.Dense(w, activation="relu", kernel_regularizer=mn.regularizers.L2(0.02))
                  for w in widths]
        model = mn.Model([*layers, mn.Dense(3, activation="softmax")], input_dim=13,
                         loss="categorical_crossentropy", optimizer=opt[optimizer], seed=1,
                         backend=backend)
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        params[backend] = (model.params.copy(), history.history["loss"])
    rtol = 1e-5 if optimizer == "sgd" else 1e-3  # Adam's and RMSprop's steps amplify rounding
    assert_close(params["fast"][0], params["reference"][0], rtol, f"L2 {widths} {optimizer}")
    np.testing.assert_allclose(params["fast"][1], params["reference"][1], rtol=1e-5)
    unregularised = mn.Model([mn.Dense(w, activation="relu") for w in widths]
                             + [mn.Dense(3, activation="softmax")], input_dim=13,
                             loss="categorical_crossentropy", seed=1,
                             optimizer={"sgd": mn.SGD(0.1), "adam": mn.Adam(0.01),
                                        "rmsprop": mn.RMSprop(0.01)}[optimizer])
    unregularised.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not np.allclose(unregularised.params, params["fast"][0], atol=1e-4)


# ---- the per-layer profile ----------------------------------------------------------------------

def test_profile_step_times_real_steps_layer_by_layer():
    """fast.profile_step runs the steps it times: the weights after it are train_step's after
    as many steps, bit for bit; every layer that computes has time in its parts, and the parts
    add up to no more than the whole step."""
    model = mn.preset("convnet-plus")
    batch, steps = 4, 3
    rng = rng_for("profile")
    x = rng.random((batch, model.input_dim), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    _, n_acts, n_dacts = model.plan.buffer_sizes(batch, 1)
    settings = model.optimizer.kernel_settings()

    def run(timed):
        params, state = model.params.copy(), model.optimizer_state.copy()
        bufs = (np.zeros_like(params), state, np.zeros(n_acts, np.float32),
                np.zeros(n_dacts, np.float32))
        args = (model.plan, params, *bufs, model._loss_code, x, y, settings, 1e-3, 0, (0, 0, 0))
        if timed:
            return params, fast.profile_step(*args, steps=steps)
        for i in range(steps):
            fast.train_step(*args[:-2], i, (0, 0, 0))
        return params, None

    timed_params, (times, step) = run(True)
    np.testing.assert_array_equal(timed_params, run(False)[0])
    assert times.shape == (len(model.layers) + 1, 3) and (times >= 0).all()
    assert times.sum() <= step * 1.01
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (mn.layers.Conv2D, mn.layers.BatchNormalization)):
            assert times[i, 0] > 0 and times[i, 2] > 0, (i, layer)
    assert times[-1, 1] > 0  # the loss's deltas
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fast.profile_step(model.plan, model.params.copy(), np.zeros_like(model.params),
                          model.optimizer_state.copy(), np.zeros(n_acts, np.float32),
                          np.zeros(n_dacts, np.float32), model._loss_code, x, y, settings,
                          1e-3, 0, (0, 0, 0), steps=0)
