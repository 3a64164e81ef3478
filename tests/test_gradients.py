"""Analytic gradients against central differences, and one SGD step worked by hand.

The maths is restated below in plain float64 NumPy, independent of mnistnet (sigmoid, relu,
softmax, Keras' MSE and cross-entropy). Central differences of it are the ground truth for:

* the reference kernels run in float64 (they are dtype-generic when handed float64 output
  buffers), to GRADCHECK_RTOL: this checks the formulas;
* the float32 kernels, compiled (mnistnet.fast, under every SIMD path) and reference, to
  FLOAT32_GRAD_RTOL: this checks the code that trains.

Every check first asserts the analytic gradient is not (nearly) zero: a gradient check that
passes on an all-zero gradient proves nothing.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from gradcheck import central_differences, check_gradient
from networks import NO_DROPOUT_KEY, SGD, dense_plan, net_buffers, no_state
from tolerances import FLOAT32_GRAD_RTOL, FORWARD_RTOL, GRADCHECK_RTOL, assert_close

from mnistnet import fast, reference

# ---- the maths, in plain float64 -----------------------------------------------------------


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def relu(z):
    return np.maximum(z, 0.0)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def linear(z):
    return z


MATH = {"linear": linear, "sigmoid": sigmoid, "relu": relu, "softmax": softmax, "tanh": np.tanh}
CODES = dict(reference.ACTIVATIONS)
assert set(MATH) == set(CODES), "every activation needs its maths here"
MSE, CE = 0, 1


def mse(p, y):
    """Keras: mean over outputs, then over the batch."""
    return np.mean(np.mean((p - y) ** 2, axis=1))


def crossentropy(p, y):
    """Keras on probabilities: renormalise rows, clip to [1e-7, 1 - 1e-7], batch mean."""
    p = np.clip(p / p.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    return -np.mean(np.sum(y * np.log(p), axis=1))


LOSS_MATH = {MSE: mse, CE: crossentropy}


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def one_hot(rng, rows, cols):
    return np.eye(cols)[rng.integers(0, cols, rows)]


# ---- float64 runs of the reference kernels (they allocate float32 when out is None) --------

def forward64(act, z):
    return getattr(reference, f"{act}_forward")(np.empty_like(z), z)


def backward64(act, out, dout):
    return getattr(reference, f"{act}_backward")(np.empty_like(out), out, dout)


def act_input(rng, act, shape):
    """Pre-activations; for relu at least 0.1 away from the kink."""
    z = rng.normal(0.0, 1.5, shape)
    if act == "relu":
        z = np.sign(z) * (0.1 + np.abs(z))
    return z


# ---- activations, losses -------------------------------------------------------------------

@pytest.mark.parametrize("act", MATH)
def test_activation_backward_is_the_derivative_float64(act):
    rng = rng_for("act64", act)
    z, g = act_input(rng, act, (4, 5)), rng.normal(size=(4, 5))
    out = forward64(act, z)
    assert_close(out, MATH[act](z), 1e-12, f"reference.{act}_forward in float64")
    numeric = central_differences(lambda v: np.sum(g * MATH[act](v)), z)
    check_gradient(backward64(act, out, g), numeric, GRADCHECK_RTOL, f"{act}_backward float64")


@pytest.mark.parametrize("act", MATH)
@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_activation_backward_float32_matches_central_differences(simd_path, backend, act):
    rng = rng_for("act32", act)
    z = act_input(rng, act, (4, 5)).astype(np.float32)
    g = rng.normal(size=(4, 5)).astype(np.float32)
    out = getattr(backend, f"{act}_forward")(None, z)
    got = getattr(backend, f"{act}_backward")(None, out, g)
    g64 = g.astype(np.float64)
    numeric = central_differences(lambda v: np.sum(g64 * MATH[act](v)), z.astype(np.float64))
    check_gradient(got, numeric, FLOAT32_GRAD_RTOL,
                   f"{backend.__name__}.{act}_backward[{simd_path}] float32")


def test_mse_backward_is_the_derivative():
    rng = rng_for("mse")
    p, y = rng.random((4, 3)), one_hot(rng, 4, 3)
    numeric = central_differences(lambda v: mse(v, y), p)
    assert_close(reference.mse_forward(p, y), mse(p, y), 1e-12, "reference.mse_forward float64")
    check_gradient(reference.mse_backward(np.empty_like(p), p, y), numeric, GRADCHECK_RTOL,
                   "mse_backward float64")
    p32, y32 = p.astype(np.float32), y.astype(np.float32)
    numeric32 = central_differences(lambda v: mse(v, y), p32.astype(np.float64))
    for backend in (fast, reference):
        check_gradient(backend.mse_backward(None, p32, y32), numeric32, FLOAT32_GRAD_RTOL,
                       f"{backend.__name__}.mse_backward float32")


def test_crossentropy_softmax_backward_is_the_derivative_wrt_the_softmax_input():
    """d/dz crossentropy(softmax(z), y) for one-hot y, probabilities away from the clip."""
    rng = rng_for("ce")
    z, y = rng.normal(0.0, 1.0, (4, 3)), one_hot(rng, 4, 3)
    probs = softmax(z)
    assert (probs > 1e-3).all() and (probs < 1 - 1e-3).all()
    assert_close(reference.crossentropy_forward(probs, y), crossentropy(probs, y), 1e-12,
                 "reference.crossentropy_forward float64")
    numeric = central_differences(lambda v: crossentropy(softmax(v), y), z)
    check_gradient(reference.crossentropy_softmax_backward(np.empty_like(probs), probs, y),
                   numeric, GRADCHECK_RTOL, "crossentropy_softmax_backward float64")
    z32, y32 = z.astype(np.float32), y.astype(np.float32)
    numeric32 = central_differences(lambda v: crossentropy(softmax(v), y), z32.astype(np.float64))
    for backend in (fast, reference):
        p32 = backend.softmax_forward(None, z32)
        check_gradient(backend.crossentropy_softmax_backward(None, p32, y32), numeric32,
                       FLOAT32_GRAD_RTOL, f"{backend.__name__}.crossentropy_softmax_backward")


def test_the_shortcut_is_not_the_gradient_of_mse_after_a_sigmoid():
    """(p - y) / B is exact for softmax + CE only; the checker must see the difference."""
    rng = rng_for("shortcut")
    z, y = rng.normal(size=(4, 3)), one_hot(rng, 4, 3)
    numeric = central_differences(lambda v: mse(sigmoid(v), y), z)
    shortcut = (sigmoid(z) - y) / 4
    with pytest.raises(AssertionError, match="relative error"):
        check_gradient(shortcut, numeric, FLOAT32_GRAD_RTOL, "shortcut")
    full = backward64("sigmoid", sigmoid(z), reference.mse_backward(np.empty_like(z),
                                                                     sigmoid(z), y))
    check_gradient(full, numeric, GRADCHECK_RTOL, "mse_backward then sigmoid_backward")


# ---- whole networks ------------------------------------------------------------------------

# The presets' activation x loss pairs on small nets. name: (widths, activations, loss)
NETS = {
    "perceptron": ([5, 3], ["sigmoid"], MSE),
    "hidden-relu": ([5, 4, 3, 3], ["relu", "relu", "sigmoid"], MSE),
    "cross-entropy": ([5, 4, 3, 3], ["relu", "relu", "softmax"], CE),
    # >= 32 outputs: the compiled step fuses the update into the weight-gradient GEMM
    "wide": ([5, 40, 33, 3], ["relu", "sigmoid", "softmax"], CE),
}
BATCH = 4


def layers_of(flat, sizes):
    """[(W, b), ...] as views into a dense net's flat block (its plan's layout)."""
    views = dense_plan(sizes, [0] * (len(sizes) - 1)).weight_views(flat)
    return list(zip(views[::2], views[1::2], strict=True))


def loss64(flat, x, y, sizes, acts, loss):
    """The network's batch-mean loss, in plain float64 maths."""
    a = x
    for (w, b), act in zip(layers_of(flat, sizes), acts, strict=True):
        a = MATH[act](a @ w + b)
    return LOSS_MATH[loss](a, y)


def gradient64(flat, x, y, sizes, acts, loss):
    """The analytic gradient (same layout as params) by chaining the reference kernels in
    float64, as the compiled net_backward chains the compiled ones."""
    layers = layers_of(flat, sizes)
    outs = [x]
    for (w, b), act in zip(layers, acts, strict=True):
        z = reference.dense_forward(np.empty((x.shape[0], w.shape[1])), outs[-1], w, b)
        outs.append(forward64(act, z))
    probs = outs[-1]
    if loss == CE:
        dz = reference.crossentropy_softmax_backward(np.empty_like(probs), probs, y)
    else:
        dz = backward64(acts[-1], probs, reference.mse_backward(np.empty_like(probs), probs, y))
    grads = np.zeros_like(flat)
    for i in range(len(layers) - 1, -1, -1):
        (w, b), (gw, gb) = layers[i], layers_of(grads, sizes)[i]
        dinp, _, _ = reference.dense_backward(np.empty_like(outs[i]), gw, gb, dz, outs[i], w)
        if i > 0:
            dz = backward64(acts[i - 1], outs[i], dinp)
    return grads


def net_problem(net):
    """float32 params, x and one-hot y for `net`, with every hidden pre-activation at least
    0.05 from the relu kink and every output probability inside (1e-3, 1 - 1e-3)."""
    sizes, acts, _ = NETS[net]
    for attempt in range(1000):
        rng = rng_for("net", net, attempt)
        params = np.concatenate([
            np.concatenate([rng.normal(0, 1 / np.sqrt(c), c * oc), rng.normal(0, 0.5, oc)])
            for c, oc in itertools.pairwise(sizes)]).astype(np.float32)
        x = rng.normal(size=(BATCH, sizes[0])).astype(np.float32)
        y = one_hot(rng, BATCH, sizes[-1]).astype(np.float32)
        a, ok = x.astype(np.float64), True
        for (w, b), act in zip(layers_of(params.astype(np.float64), sizes), acts, strict=True):
            z = a @ w + b
            ok &= act != "relu" or bool(np.min(np.abs(z)) > 0.05)
            a = MATH[act](z)
        ok &= bool((a > 1e-3).all() and (a < 1 - 1e-3).all())
        if ok:
            return params, x, y
    raise AssertionError(f"no well-conditioned problem for {net}")


def check_net_gradient(got, numeric, sizes, rtol, what):
    """Per layer, W and b together, so a wrong small layer is not hidden by a large one."""
    pairs = zip(layers_of(got, sizes), layers_of(numeric, sizes), strict=True)
    for i, ((gw, gb), (nw, nb)) in enumerate(pairs):
        check_gradient(np.concatenate([gw.ravel(), gb]), np.concatenate([nw.ravel(), nb]),
                       rtol, f"{what} layer {i}")


@pytest.mark.parametrize("net", NETS)
def test_network_gradient_float64(net):
    sizes, acts, loss = NETS[net]
    params, x, y = (a.astype(np.float64) for a in net_problem(net))
    numeric = central_differences(lambda p: loss64(p, x, y, sizes, acts, loss), params)
    check_net_gradient(gradient64(params, x, y, sizes, acts, loss), numeric, sizes,
                       GRADCHECK_RTOL, f"{net} float64 chain of reference kernels")


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_train_step_float32_gradient_matches_central_differences(simd_path, backend, net):
    """train_step leaves the gradient in `grads` and moves params by exactly -lr * grads."""
    sizes, acts, loss = NETS[net]
    params, x, y = net_problem(net)
    numeric = central_differences(
        lambda p: loss64(p, x.astype(np.float64), y.astype(np.float64), sizes, acts, loss),
        params.astype(np.float64))
    plan = dense_plan(sizes, [CODES[a] for a in acts])
    grads, acts_buf, dacts = net_buffers(plan, BATCH)
    before, lr = params.copy(), np.float32(0.25)
    value = backend.train_step(plan, params, grads, no_state(), acts_buf, dacts, loss, x, y,
                               SGD, lr, 0, NO_DROPOUT_KEY)
    what = f"{backend.__name__}.train_step[{simd_path}] {net}"
    assert_close(value, loss64(before.astype(np.float64), x.astype(np.float64),
                               y.astype(np.float64), sizes, acts, loss), FORWARD_RTOL,
                 what + " loss")
    check_net_gradient(grads, numeric, sizes, FLOAT32_GRAD_RTOL, what)
    np.testing.assert_array_equal(params, before - lr * grads, err_msg=what + " update")


# ---- one SGD step, by hand -----------------------------------------------------------------

def one_layer_step(backend, w, b, x, y, act, loss, lr):
    """One train_step of a single dense layer; returns (prediction before the step, loss,
    gradient block, W after, b after)."""
    sizes = list(w.shape)
    plan = dense_plan(sizes, [CODES[act]])
    params = np.concatenate([w.ravel(), b]).astype(np.float32)
    grads, acts, dacts = net_buffers(plan, x.shape[0])
    x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
    scratch = np.zeros(acts.shape[0], np.float32)
    pred = backend.predict(plan, params, scratch, x32, None, x.shape[0])
    value = backend.train_step(plan, params, grads, no_state(), acts, dacts, loss, x32, y32,
                               SGD, lr, 0, NO_DROPOUT_KEY)
    (w_after, b_after), = layers_of(params, sizes)
    return pred, value, grads, w_after, b_after


@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_sgd_step_by_hand_sigmoid_mse(backend):
    # A 2-input -> 2-output sigmoid layer, MSE, one row, learning rate 0.5.
    w = np.array([[0.1, -0.2],
                  [0.3, 0.4]])
    b = np.array([0.05, -0.1])
    x = np.array([[1.0, 2.0]])
    y = np.array([[1.0, 0.0]])
    # z = x @ W + b = [1*0.1 + 2*0.3 + 0.05, 1*(-0.2) + 2*0.4 - 0.1] = [0.75, 0.5]
    # s = sigmoid(z) = [1/(1+e^-0.75), 1/(1+e^-0.5)]
    s = [0.6791786992, 0.6224593312]
    # loss = ((s0 - 1)^2 + (s1 - 0)^2) / (B*C = 2) = (0.1029263071 + 0.3874556190) / 2
    loss = 0.2451909630
    # dL/ds = 2 (s - y) / (B*C) = s - y = [-0.3208213008, 0.6224593312]
    # ds/dz = s (1 - s) = [0.2178949938, 0.2350037122]
    # dz = dL/ds * ds/dz = [-0.0699053553, 0.1462802535]
    # dW[i, j] = x[i] * dz[j]; db = dz
    dw = [[-0.0699053553, 0.1462802535],
          [-0.1398107107, 0.2925605071]]
    db = [-0.0699053553, 0.1462802535]
    # W' = W - 0.5 dW, b' = b - 0.5 db
    w_new = [[0.1349526777, -0.2731401268],
             [0.3699053553, 0.2537197465]]
    b_new = [0.0849526777, -0.1731401268]

    pred, value, grads, w_after, b_after = one_layer_step(backend, w, b, x, y, "sigmoid",
                                                          MSE, 0.5)
    name = f"{backend.__name__} sigmoid+MSE step"
    assert_close(pred, [s], FORWARD_RTOL, name + " output")
    assert_close(value, loss, FORWARD_RTOL, name + " loss")
    assert_close(grads, np.concatenate([np.ravel(dw), db]), FORWARD_RTOL, name + " gradient")
    assert_close(w_after, w_new, FORWARD_RTOL, name + " W")
    assert_close(b_after, b_new, FORWARD_RTOL, name + " b")


@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_sgd_step_by_hand_softmax_crossentropy(backend):
    # A 2-input -> 3-output softmax layer, cross-entropy, two rows, learning rate 0.5.
    w = np.array([[0.2, -0.1, 0.0],
                  [0.1, 0.3, -0.2]])
    b = np.array([0.0, 0.1, -0.1])
    x = np.array([[1.0, -1.0],
                  [0.5, 2.0]])
    y = np.array([[0.0, 1.0, 0.0],
                  [0.0, 0.0, 1.0]])
    # z row 0 = 1*[0.2, -0.1, 0] - 1*[0.1, 0.3, -0.2] + b       = [0.1, -0.3, 0.1]
    # z row 1 = 0.5*[0.2, -0.1, 0] + 2*[0.1, 0.3, -0.2] + b     = [0.3, 0.65, -0.5]
    # e = exp(z - max(z)): row 0 [1, e^-0.4, 1] = [1, 0.6703200460, 1], sum 2.6703200460
    #                      row 1 [e^-0.35, 1, e^-1.15] = [0.7046880897, 1, 0.3166367694],
    #                      sum 2.0213248591
    # p = e / sum
    p = [[0.3744869464, 0.2510261072, 0.3744869464],
         [0.3486268358, 0.4947250292, 0.1566481350]]
    # loss = -(log p[0, 1] + log p[1, 2]) / 2 = (1.3821983327 + 1.8537531673) / 2
    loss = 1.6179757500
    # dz = (p - y) / B = [[ 0.1872434732, -0.3744869464,  0.1872434732],
    #                     [ 0.1743134179,  0.2473625146, -0.4216759325]]
    # dW = x^T dz: dW[0] = 1*dz[0] + 0.5*dz[1], dW[1] = -1*dz[0] + 2*dz[1]
    dw = [[0.2744001822, -0.2508056891, -0.0235944930],
          [0.1613833626, 0.8692119756, -1.0305953382]]
    db = [0.3615568911, -0.1271244318, -0.2344324593]  # dz[0] + dz[1]
    # W' = W - 0.5 dW, b' = b - 0.5 db
    w_new = [[0.0627999089, 0.0254028446, 0.0117972465],
             [0.0193083187, -0.1346059878, 0.3152976691]]
    b_new = [-0.1807784456, 0.1635622159, 0.0172162296]

    pred, value, grads, w_after, b_after = one_layer_step(backend, w, b, x, y, "softmax",
                                                          CE, 0.5)
    name = f"{backend.__name__} softmax+CE step"
    assert_close(pred, p, FORWARD_RTOL, name + " output")
    assert_close(value, loss, FORWARD_RTOL, name + " loss")
    assert_close(grads, np.concatenate([np.ravel(dw), db]), FORWARD_RTOL, name + " gradient")
    assert_close(w_after, w_new, FORWARD_RTOL, name + " W")
    assert_close(b_after, b_new, FORWARD_RTOL, name + " b")
