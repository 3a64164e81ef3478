"""Every compiled kernel (mnistnet.fast) equals its NumPy twin (mnistnet.reference).

Each comparison runs under every SIMD path this CPU supports (the `simd_path` fixture), on
seeded random float32 data with mixed signs and magnitudes, with norm-relative tolerances from
tests/tolerances.py. Also here: the `out=` contract, argument errors, thread-count
independence and the raw GEMM against a float64 ground truth.
"""

from __future__ import annotations

import inspect
import itertools
import zlib

import numpy as np
import pytest
from networks import NO_DROPOUT_KEY, SGD, dense_plan, net_buffers, no_state
from tolerances import BACKWARD_RTOL, FORWARD_RTOL, assert_close

import mnistnet as mn
from mnistnet import _kernels, fast, reference
from mnistnet.codes import (
    OPTIMIZER_DTYPE,
    OPTIMIZER_FIELDS,
    OPTIMIZERS,
    PLAN_DTYPE,
    PLAN_FIELDS,
)

BATCHES = (1, 7, 32, 1000)
WIDTHS = (1, 10, 33, 128, 785)
# (in, out) pairs for dense layers: every width above as both fan-in and fan-out, the two
# weight shapes of the presets, and with batch 1000 the large (1000, 785) x (785, 128).
DENSE_PAIRS = (
    (1, 1), (1, 785), (785, 1), (10, 33), (33, 10), (33, 128), (128, 33),
    (128, 785), (785, 128), (784, 10), (64, 10), (10, 1),
)
ACTIVATIONS = tuple(reference.ACTIVATIONS)  # every activation the engine has
GUARD = 67  # floats of padding around buffers: catches reads and writes past either end


# ---- data ----------------------------------------------------------------------------------

def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters: same data whatever the test order."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def varied(rng, shape, lo=-2.0, hi=2.0) -> np.ndarray:
    """float32 normals times per-element scales 10**U(lo, hi): signs and magnitudes mixed."""
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(lo, hi, shape)).astype(np.float32)


def sprinkle(rng, a, values) -> np.ndarray:
    """a with some of `values` (in random order) written at random positions."""
    flat = a.reshape(-1)
    n = min(flat.size, len(values))
    flat[rng.choice(flat.size, n, replace=False)] = rng.permutation(values)[:n]
    return a


def one_hot(rng, rows, cols) -> np.ndarray:
    y = np.zeros((rows, cols), dtype=np.float32)
    y[np.arange(rows), rng.integers(0, cols, rows)] = 1
    return y


def guarded(a, fill=np.nan):
    """(buffer, view): a copy of `a` as a C-contiguous view into a larger buffer whose GUARD
    floats either side hold `fill`."""
    buf = np.full(a.size + 2 * GUARD, fill, dtype=np.float32)
    view = buf[GUARD: GUARD + a.size].reshape(a.shape)
    view[...] = a
    return buf, view


def assert_guard_intact(buf, what):
    edges = np.concatenate([buf[:GUARD], buf[-GUARD:]])
    assert np.isnan(edges).all(), f"{what}: wrote outside its output buffer"


def sigmoid_input(rng, shape):
    x = varied(rng, shape, -2, 1.5)
    return sprinkle(rng, x, [100, -100, 1000, -1000, 89, -89, 88.5, -88.5, 0, -0.0, 1e-8,
                             -1e-8, 3e38, -3e38, 20, -20])


def relu_input(rng, shape):
    x = varied(rng, shape)
    x[rng.random(shape) < 0.2] = 0.0
    x[rng.random(shape) < 0.1] = -0.0
    return x


def softmax_input(rng, shape):
    """Rows of several kinds: mixed values, all large (1000 + x), one spike of 1000, all very
    negative, all equal, and tiny differences."""
    x = varied(rng, shape, -2, 1)
    for b in range(shape[0]):
        kind = (b + int(rng.integers(6))) % 6
        if kind == 1:
            x[b] += 1000
        elif kind == 2:
            x[b, rng.integers(shape[1])] = 1000
        elif kind == 3:
            x[b] -= 1000
        elif kind == 4:
            x[b] = x[b, 0]
        elif kind == 5:
            x[b] *= np.float32(1e-6)
    return x


ACT_INPUT = {"linear": varied, "sigmoid": sigmoid_input, "relu": relu_input,
             "softmax": softmax_input, "tanh": sigmoid_input}


def glorot_params(rng, sizes) -> np.ndarray:
    """A flat float32 parameter block: Glorot-uniform W (in, out), small random b, per layer."""
    parts = []
    for c, oc in itertools.pairwise(sizes):
        limit = np.sqrt(6.0 / (c + oc))
        parts += [rng.uniform(-limit, limit, c * oc), rng.uniform(-0.1, 0.1, oc)]
    return np.concatenate(parts).astype(np.float32)


# ---- dense ---------------------------------------------------------------------------------

def test_both_backends_use_the_same_codes():
    # Both take their codes from mnistnet.codes; the compiled kernels' own enums in
    # _kernels.pxd must not drift from them (checked at import, and here).
    assert _kernels.ACTIVATIONS == fast.ACTIVATIONS == reference.ACTIVATIONS
    assert _kernels.LOSSES == fast.LOSSES == reference.LOSSES
    assert _kernels.OPTIMIZERS == fast.OPTIMIZERS == reference.OPTIMIZERS
    assert (fast.EPOCH_DONE, fast.EPOCH_NONFINITE_LOSS, fast.EPOCH_INTERRUPTED) == (
        reference.EPOCH_DONE, reference.EPOCH_NONFINITE_LOSS, reference.EPOCH_INTERRUPTED)


def test_the_plan_table_has_the_layout_of_the_kernels_struct():
    """mnistnet.plan's table is read by the compiled side as an array of LayerPlan structs:
    the same fields at the same byte offsets, and the same size."""
    names, offsets, size = _kernels.plan_layout()
    assert names == PLAN_FIELDS
    assert offsets == tuple(PLAN_DTYPE.fields[n][1] for n in PLAN_FIELDS)
    assert size == PLAN_DTYPE.itemsize


def test_the_optimizer_settings_have_the_layout_of_the_kernels_struct():
    """Optimizer.kernel_settings() is read by the compiled side as its OptimizerSettings
    struct, byte for byte."""
    names, offsets, size = _kernels.optimizer_layout()
    assert names == OPTIMIZER_FIELDS
    assert offsets == tuple(OPTIMIZER_DTYPE.fields[n][1] for n in OPTIMIZER_FIELDS)
    assert size == OPTIMIZER_DTYPE.itemsize
    settings = mn.RMSprop(0.01, rho=0.8, momentum=0.5, epsilon=1e-6, centered=True)
    record = settings.kernel_settings()
    assert (record["code"], record["rho"], record["momentum"], record["centered"]) == (
        OPTIMIZERS["rmsprop"], 0.8, 0.5, 1)


@pytest.mark.parametrize("pair", DENSE_PAIRS, ids=[f"{c}x{oc}" for c, oc in DENSE_PAIRS])
@pytest.mark.parametrize("batch", BATCHES)
def test_dense_forward_matches_reference(simd_path, batch, pair):
    c, oc = pair
    rng = rng_for("dense_forward", batch, c, oc)
    inp, weight, bias = varied(rng, (batch, c)), varied(rng, (c, oc)), varied(rng, (oc,))
    want = reference.dense_forward(None, inp, weight, bias)
    out_buf, out = guarded(np.zeros((batch, oc), np.float32))
    got = fast.dense_forward(out, guarded(inp)[1], guarded(weight)[1], guarded(bias)[1])
    what = f"dense_forward[{simd_path}] inp {inp.shape} weight {weight.shape}"
    assert got is out
    assert_guard_intact(out_buf, what)
    assert_close(got, want, FORWARD_RTOL, what)


@pytest.mark.parametrize("pair", DENSE_PAIRS, ids=[f"{c}x{oc}" for c, oc in DENSE_PAIRS])
@pytest.mark.parametrize("batch", BATCHES)
def test_dense_backward_matches_reference(simd_path, batch, pair):
    c, oc = pair
    rng = rng_for("dense_backward", batch, c, oc)
    dout, inp, weight = varied(rng, (batch, oc)), varied(rng, (batch, c)), varied(rng, (c, oc))
    want = reference.dense_backward(None, None, None, dout, inp, weight)
    bufs, outs = zip(*(guarded(np.zeros(w.shape, np.float32)) for w in want), strict=True)
    got = fast.dense_backward(*outs, guarded(dout)[1], guarded(inp)[1], guarded(weight)[1])
    for name, g, o, w, buf in zip(("dinp", "dweight", "dbias"), got, outs, want, bufs,
                                  strict=True):
        what = (f"dense_backward[{simd_path}] {name} for dout {dout.shape} inp {inp.shape} "
                f"weight {weight.shape}")
        assert g is o, what
        assert_guard_intact(buf, what)
        assert_close(g, w, BACKWARD_RTOL, what)


def test_dense_on_mnist_matches_reference(simd_path, mnist):
    """Real pixels (many exact zeros) through the cross-entropy preset's shapes."""
    (_, _), (x_test, _) = mnist
    x = np.ascontiguousarray(x_test[:1000])
    rng = rng_for("mnist")
    sizes = [784, 128, 64, 10]
    plan = dense_plan(sizes, [2, 2, 3])
    params = glorot_params(rng, sizes)
    chunk = 1000
    scratch = np.empty(plan.buffer_sizes(chunk)[1], np.float32)
    got = fast.predict(plan, params, scratch, x, None, chunk)
    want = reference.predict(plan, params, None, x, None, chunk)
    assert_close(got, want, FORWARD_RTOL, f"predict[{simd_path}] on 1000 MNIST test images")


# ---- activations ---------------------------------------------------------------------------

@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_forward_matches_reference(simd_path, act, batch, width):
    rng = rng_for("act_forward", act, batch, width)
    x = ACT_INPUT[act](rng, (batch, width))
    with np.errstate(over="raise", invalid="raise"):
        want = getattr(reference, f"{act}_forward")(None, x)
    got = getattr(fast, f"{act}_forward")(None, x)
    what = f"{act}_forward[{simd_path}] ({batch}, {width})"
    assert np.isfinite(got).all(), f"{what}: non-finite output"
    assert_close(got, want, FORWARD_RTOL, what)
    if act == "sigmoid":
        assert ((got >= 0) & (got <= 1)).all(), f"{what}: outside [0, 1]"
    if act == "softmax":
        assert_close(got.sum(axis=1, dtype=np.float64), np.ones(batch), FORWARD_RTOL,
                     f"{what} row sums")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward_matches_reference(simd_path, act, batch, width):
    rng = rng_for("act_backward", act, batch, width)
    if act == "softmax":
        # Moderate logits: for nearly one-hot rows out * (dout - <dout, out>) cancels and two
        # float32 summation orders legitimately disagree in the cancelled digits.
        x = varied(rng, (batch, width), -1, 0.5)
    else:
        x = ACT_INPUT[act](rng, (batch, width))
    out = getattr(reference, f"{act}_forward")(None, x)
    dout = varied(rng, (batch, width))
    want = getattr(reference, f"{act}_backward")(None, out, dout)
    got = getattr(fast, f"{act}_backward")(None, out, dout)
    assert_close(got, want, BACKWARD_RTOL, f"{act}_backward[{simd_path}] ({batch}, {width})")


def test_relu_backward_masks_exact_zeros():
    out = np.array([[0.0, -0.0, 1e-30, 2.0]], dtype=np.float32)
    dout = np.array([[5.0, 6.0, 7.0, 8.0]], dtype=np.float32)
    for backend in (fast, reference):
        got = backend.relu_backward(None, out, dout)
        np.testing.assert_array_equal(got, [[0.0, 0.0, 7.0, 8.0]], err_msg=backend.__name__)


def test_softmax_forward_is_accurate_on_wide_rows():
    """One dominant logit and 784 equal small ones, against float64. The sum is
    1 + 784 e^-10 (e^-10 ~ 381.4 float32 ulps of 1): a float32 running sum rounds every one of
    the 784 additions the same way and is off by ~3.6e-5 relative, over FORWARD_RTOL."""
    x = np.zeros((1, 785), dtype=np.float32)
    x[0, 0] = 10
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max())
    want = e / e.sum()
    assert_close(reference.softmax_forward(None, x), want, FORWARD_RTOL,
                 "reference.softmax_forward (1, 785) vs float64")
    assert_close(fast.softmax_forward(None, x), want, FORWARD_RTOL,
                 "fast.softmax_forward (1, 785) vs float64")


def test_sigmoid_is_accurate_elementwise(simd_path):
    """The compiled exp is a polynomial, not libm: every output of a dense sweep of inputs
    within a few float32 ulps of float64 (not just in norm), subnormal outputs included."""
    x = np.linspace(-110, 110, 400_001, dtype=np.float32).reshape(1, -1)
    got = fast.sigmoid_forward(None, x).astype(np.float64)
    want = 1 / (1 + np.exp(-x.astype(np.float64)))
    normal = want > np.finfo(np.float32).tiny
    ulp = np.finfo(np.float32).eps / 2
    assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < 8 * ulp, simd_path
    smallest = np.finfo(np.float32).smallest_subnormal
    assert np.max(np.abs(got[~normal] - want[~normal])) < 2 * smallest


def test_sigmoid_saturates_without_overflow():
    x = np.array([[-1000, -100, -89, 0, 89, 100, 1000, 3e38, -3e38]], dtype=np.float32)
    got = fast.sigmoid_forward(None, x)
    assert np.isfinite(got).all()
    assert got[0, 3] == 0.5
    assert (got[0, [4, 5, 6, 7]] == 1).all()
    assert (got[0, [0, 8]] == 0).all()
    assert 0 < got[0, 1] < 1e-40  # exp(-100) ~ 3.7e-44, a float32 subnormal


# ---- losses, SGD, metrics ------------------------------------------------------------------

def mse_pair(rng, batch, width):
    pred = varied(rng, (batch, width), -2, 1)
    target = one_hot(rng, batch, width) if rng.random() < 0.5 else rng.random(
        (batch, width)).astype(np.float32)
    return pred, target


def ce_pair(rng, batch, width):
    """Softmax rows (some scaled so they need renormalising, some with a 0 where the target
    is, which the clip catches) and targets one-hot or soft."""
    probs = reference.softmax_forward(None, varied(rng, (batch, width), -1, 1))
    target = one_hot(rng, batch, width)
    for b in range(batch):
        kind = int(rng.integers(4))
        if kind == 1:
            probs[b] *= np.float32(3)
        elif kind == 2 and width > 1:
            probs[b, np.argmax(target[b])] = 0
        elif kind == 3:
            target[b] = rng.dirichlet(np.ones(width))
    return probs, target


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_mse_matches_reference(simd_path, batch, width):
    rng = rng_for("mse", batch, width)
    pred, target = mse_pair(rng, batch, width)
    what = f"[{simd_path}] pred {pred.shape}"
    assert_close(fast.mse_forward(pred, target), reference.mse_forward(pred, target),
                 FORWARD_RTOL, "mse_forward" + what)
    assert_close(fast.mse_backward(None, pred, target),
                 reference.mse_backward(None, pred, target), BACKWARD_RTOL, "mse_backward" + what)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_crossentropy_matches_reference(simd_path, batch, width):
    rng = rng_for("ce", batch, width)
    probs, target = ce_pair(rng, batch, width)
    what = f"[{simd_path}] probs {probs.shape}"
    got = fast.crossentropy_forward(probs, target)
    assert np.isfinite(got), "crossentropy_forward" + what
    assert_close(got, reference.crossentropy_forward(probs, target), FORWARD_RTOL,
                 "crossentropy_forward" + what)
    assert_close(fast.crossentropy_softmax_backward(None, probs, target),
                 reference.crossentropy_softmax_backward(None, probs, target), BACKWARD_RTOL,
                 "crossentropy_softmax_backward" + what)


def test_crossentropy_clips_like_keras():
    # Row 0: the target's probability is 0 -> clipped to 1e-7 -> -log(1e-7) = 16.118...
    # Row 1: probability 1 -> clipped to 1 - 1e-7 -> ~1.19e-7. Mean over the 2 rows.
    probs = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    target = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    want = (-np.log(np.float32(1e-7)) - np.log(np.float32(1) - np.float32(1e-7))) / 2
    for backend in (fast, reference):
        assert_close(backend.crossentropy_forward(probs, target), want, FORWARD_RTOL,
                     f"{backend.__name__}.crossentropy_forward clip")


@pytest.mark.parametrize("n", (1, 7, 785, 101_770))
def test_sgd_update_matches_reference(simd_path, n):
    rng = rng_for("sgd", n)
    params, grads = varied(rng, (n,)), varied(rng, (n,))
    want = reference.sgd_update(params.copy(), grads, 0.01)
    before = params.copy()
    got = fast.sgd_update(params, grads, 0.01)
    assert got is params
    what = f"sgd_update[{simd_path}] ({n},)"
    assert_close(got, want, FORWARD_RTOL, what)
    assert_close(got - before, want - before, FORWARD_RTOL, what + " step")


@pytest.mark.parametrize("n", (1, 7, 16, 17, 785, (1 << 20) + 3, 3 << 20))
@pytest.mark.parametrize("bad", (None, np.nan, np.inf, -np.inf))
def test_all_finite_matches_reference(simd_path, n, bad):
    """Every position class (first, last, a SIMD tail, the middle, the far end of a thread's
    block) of one NaN/Inf among finite values that include the extremes of float32."""
    rng = rng_for("finite", n)
    x = varied(rng, (n,))
    x[rng.random(n) < 0.01] = np.finfo(np.float32).max
    x[rng.random(n) < 0.01] = np.finfo(np.float32).tiny / 4  # subnormal
    positions = sorted({0, n - 1, n // 2, min(n - 1, (n // 16) * 16), min(n - 1, (1 << 20) + 1)})
    for position in positions if bad is not None else [None]:
        y = x.copy()
        if position is not None:
            y[position] = bad
        want = reference.all_finite(y)
        assert want == (bad is None)
        assert fast.all_finite(y) == want, f"all_finite[{simd_path}] n={n} {bad} at {position}"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_count_correct_matches_reference(simd_path, batch, width):
    rng = rng_for("count", batch, width)
    # Small integers: many rows have tied maxima.
    pred = rng.integers(0, 3, (batch, width)).astype(np.float32)
    target = one_hot(rng, batch, width)
    target[rng.random(batch) < 0.2] = 0  # all-zero rows: argmax 0
    want = int(np.sum(np.argmax(pred, axis=1) == np.argmax(target, axis=1)))
    assert reference.count_correct(pred, target) == want
    assert fast.count_correct(pred, target) == want


def test_count_correct_ties_take_the_first_maximum():
    pred = np.array([[1, 3, 3, 0],    # argmax 1, not 2
                     [5, 5, 5, 5],    # argmax 0
                     [0, 2, 7, 7],    # argmax 2
                     [-1, -1, -2, -1]], dtype=np.float32)  # argmax 0
    first = np.eye(4, dtype=np.float32)[[1, 0, 2, 0]]
    second = np.eye(4, dtype=np.float32)[[2, 1, 3, 1]]
    for backend in (fast, reference):
        assert backend.count_correct(pred, first) == 4, backend.__name__
        assert backend.count_correct(pred, second) == 0, backend.__name__
        # Ties in the target too: row [1, 1, 0, 0] has argmax 0.
        tied = np.array([[0, 1, 1, 0]] * 4, dtype=np.float32)
        assert backend.count_correct(pred, tied) == 1, backend.__name__


# ---- the network: one SGD step and predict -------------------------------------------------

# name: (layer widths, activation codes, loss code)
NETS = {
    "perceptron": ([33, 10], [1], 0),
    "hidden-relu": ([33, 16, 12, 10], [2, 2, 1], 0),
    "cross-entropy": ([33, 16, 12, 10], [2, 2, 3], 1),
    "linear-softmax-mse": ([33, 16, 10], [0, 3], 0),
    # >= 32 outputs: the compiled step fuses the update into the weight-gradient GEMM
    "wide-cross-entropy": ([33, 48, 33, 10], [2, 2, 3], 1),
}


def train_step(backend, plan, params, grads, acts, dacts, loss, x, y, lr):
    """One plain-SGD step of backend's train_step (no dropout: dense nets)."""
    return backend.train_step(plan, params, grads, no_state(), acts, dacts, loss, x, y, SGD,
                              lr, 0, NO_DROPOUT_KEY)


@pytest.mark.parametrize("batch", (1, 7, 32))
@pytest.mark.parametrize("net", NETS)
def test_train_step_matches_reference(simd_path, net, batch):
    sizes, acts, loss = NETS[net]
    plan = dense_plan(sizes, acts)
    rng = rng_for("train_step", net, batch)
    start = glorot_params(rng, sizes)
    p_fast, p_ref = start.copy(), start.copy()
    g_fast, a_fast, d_fast = net_buffers(plan, batch)
    g_ref, a_ref, d_ref = net_buffers(plan, batch)
    for step in range(3):
        x = rng.random((batch, sizes[0])).astype(np.float32)
        y = one_hot(rng, batch, sizes[-1])
        what = f"train_step[{simd_path}] {net} batch {batch} step {step}"
        before = p_ref.copy()
        loss_ref = train_step(reference, plan, p_ref, g_ref, a_ref, d_ref, loss, x, y, 0.1)
        loss_fast = train_step(fast, plan, p_fast, g_fast, a_fast, d_fast, loss, x, y, 0.1)
        assert np.isfinite(loss_fast), what
        assert_close(loss_fast, loss_ref, FORWARD_RTOL, what + " loss")
        views = zip(plan.weight_views(g_fast), plan.weight_views(g_ref), strict=True)
        for i, (g_f, g_r) in enumerate(views):
            assert_close(g_f, g_r, BACKWARD_RTOL, f"{what} {'dW' if i % 2 == 0 else 'db'}{i // 2}")
        assert_close(p_fast - before, p_ref - before, BACKWARD_RTOL, what + " param change")
        assert_close(p_fast, p_ref, FORWARD_RTOL, what + " params")
        np.testing.assert_array_equal(p_fast, before - np.float32(0.1) * g_fast,
                                      err_msg=what + ": params != before - lr * grads")
        p_fast[...] = p_ref  # next step from the same point


def nonfinite_step(backend, net, bad):
    """(loss, params before, params after) of one train_step on a batch holding `bad`."""
    sizes, acts, loss = NETS[net]
    plan = dense_plan(sizes, acts)
    rng = rng_for("nonfinite", net)
    params = glorot_params(rng, sizes)
    before = params.copy()
    grads, a, d = net_buffers(plan, 4)
    x = rng.random((4, sizes[0])).astype(np.float32)
    x[2, 5] = bad
    with np.errstate(invalid="ignore", over="ignore"):
        value = train_step(backend, plan, params, grads, a, d, loss, x,
                           one_hot(rng, 4, sizes[-1]), 0.1)
    return value, before, params


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_train_step_skips_a_batch_holding_nan(backend, net):
    """NaN in, NaN loss out, and then (train_step's contract) params are left untouched."""
    value, before, after = nonfinite_step(backend, net, np.nan)
    assert np.isnan(value), f"{backend.__name__}: loss {value} from a batch holding NaN"
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("net", NETS)
def test_train_step_on_a_batch_holding_inf_matches_reference(net):
    """An Inf may legitimately give a finite loss (a saturated sigmoid); the twins must agree
    on the loss and on what is written to params."""
    loss_fast, _, p_fast = nonfinite_step(fast, net, np.inf)
    loss_ref, _, p_ref = nonfinite_step(reference, net, np.inf)
    assert np.isfinite(loss_fast) == np.isfinite(loss_ref), (loss_fast, loss_ref)
    np.testing.assert_array_equal(np.isnan(p_fast), np.isnan(p_ref))


def test_relu_forward_propagates_nan_like_the_reference():
    """np.maximum(nan, 0) is nan. A relu that maps NaN to 0 hides a non-finite batch from the
    loss check, and train_step then writes NaN gradients into params."""
    x = np.array([[np.nan, -1.0, 2.0]], dtype=np.float32)
    want = reference.relu_forward(None, x)
    np.testing.assert_array_equal(fast.relu_forward(None, x), want)


@pytest.mark.parametrize("chunk", (1, 7, 32, 1000))
@pytest.mark.parametrize("net", NETS)
def test_predict_matches_reference(simd_path, net, chunk):
    sizes, acts, _ = NETS[net]
    plan = dense_plan(sizes, acts)
    rng = rng_for("predict", net, chunk)
    params = glorot_params(rng, sizes)
    x = varied(rng, (50, sizes[0]), -1, 0.5)
    scratch = np.empty(plan.buffer_sizes(chunk)[1], np.float32)
    out_buf, out = guarded(np.zeros((50, sizes[-1]), np.float32))
    got = fast.predict(plan, params, scratch, x, out, chunk)
    want = reference.predict(plan, params, None, x, None, chunk)
    what = f"predict[{simd_path}] {net} chunk {chunk}"
    assert got is out, what
    assert_guard_intact(out_buf, what)
    assert_close(got, want, FORWARD_RTOL, what)
    assert_close(fast.predict(plan, params, scratch, x, None, chunk), want,
                 FORWARD_RTOL, what + " (out=None)")


# ---- the out= contract ---------------------------------------------------------------------

def _f32(rng, *shape):
    return varied(rng, shape, -1, 1)


# kernel: (names of its output arguments, valid non-output arguments by name). Shapes are
# B=7, C=33, OC=10 so every 2-D array has two dimensions > 1 (a transposed copy of it is then
# not C-contiguous).
def kernel_specs(rng):
    probs = reference.softmax_forward(None, _f32(rng, 7, 10))
    act_out = reference.sigmoid_forward(None, _f32(rng, 7, 33))
    specs = {
        "dense_forward": (("out",), {"inp": _f32(rng, 7, 33), "weight": _f32(rng, 33, 10),
                                      "bias": _f32(rng, 10)}),
        "dense_backward": (("dinp", "dweight", "dbias"),
                           {"dout": _f32(rng, 7, 10), "inp": _f32(rng, 7, 33),
                            "weight": _f32(rng, 33, 10)}),
        "softmax_forward": (("out",), {"inp": _f32(rng, 7, 33)}),
        "softmax_backward": (("dinp",), {"out": probs, "dout": _f32(rng, 7, 10)}),
        "mse_forward": ((), {"pred": _f32(rng, 7, 10), "target": one_hot(rng, 7, 10)}),
        "mse_backward": (("dpred",), {"pred": _f32(rng, 7, 10), "target": one_hot(rng, 7, 10)}),
        "crossentropy_forward": ((), {"probs": probs, "target": one_hot(rng, 7, 10)}),
        "crossentropy_softmax_backward": (("dlogits",),
                                          {"probs": probs, "target": one_hot(rng, 7, 10)}),
        "sgd_update": ((), {"params": _f32(rng, 7, 33), "grads": _f32(rng, 7, 33),
                            "learning_rate": 0.01}),
        "count_correct": ((), {"pred": _f32(rng, 7, 10), "target": one_hot(rng, 7, 10)}),
    }
    for act in ("linear", "sigmoid", "relu"):
        specs[f"{act}_forward"] = (("out",), {"inp": _f32(rng, 7, 33)})
        specs[f"{act}_backward"] = (("dinp",), {"out": act_out, "dout": _f32(rng, 7, 33)})
    return specs


_SPECS = kernel_specs(rng_for("names"))
KERNELS = sorted(_SPECS)
KERNELS_WITH_OUTPUTS = [k for k in KERNELS if _SPECS[k][0]]


def call(backend, name, args):
    """backend.<name> with `args` by name, passed positionally in the reference's order."""
    params = inspect.signature(getattr(reference, name)).parameters
    return getattr(backend, name)(*(args[p] for p in params))


def spec_args(name, seed="spec"):
    """(output names, all arguments by name with outputs None)."""
    outs, ins = kernel_specs(rng_for(seed, name))[name]
    return outs, {**dict.fromkeys(outs), **ins}


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", KERNELS_WITH_OUTPUTS)
@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_out_is_written_in_place_and_none_allocates(backend, name):
    outs, args = spec_args(name)
    allocated = as_tuple(call(backend, name, args))
    inputs = [v for v in args.values() if isinstance(v, np.ndarray)]
    for o, r in zip(outs, allocated, strict=True):
        assert r.dtype == np.float32 and r.flags.c_contiguous, f"{name}: {o}"
        assert not any(np.shares_memory(r, a) for a in inputs), f"{name}: {o} not fresh"
    given = {o: np.full(r.shape, np.nan, np.float32) for o, r in zip(outs, allocated, strict=True)}
    result = as_tuple(call(backend, name, {**args, **given}))
    for o, r, a in zip(outs, result, allocated, strict=True):
        assert np.shares_memory(r, given[o]), f"{backend.__name__}.{name}: {o} not used"
        np.testing.assert_array_equal(given[o], a, err_msg=f"{backend.__name__}.{name}: {o}")


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_activations_work_in_place(backend, act):
    rng = rng_for("in_place", act)
    x = ACT_INPUT[act](rng, (7, 33))
    forward = getattr(backend, f"{act}_forward")
    backward = getattr(backend, f"{act}_backward")
    want = forward(None, x)
    buf = x.copy()
    assert forward(buf, buf) is buf
    np.testing.assert_array_equal(buf, want, err_msg=f"{act}_forward in place")
    dout = varied(rng, (7, 33))
    want = backward(None, buf, dout)
    assert backward(dout, buf, dout) is dout  # dinp is dout
    np.testing.assert_array_equal(dout, want, err_msg=f"{act}_backward in place")


def test_predict_out_none_allocates():
    plan = dense_plan([33, 10], [1])
    rng = rng_for("predict_out")
    params, x = glorot_params(rng, [33, 10]), _f32(rng, 9, 33)
    scratch = np.empty(plan.buffer_sizes(4)[1], np.float32)
    got = fast.predict(plan, params, scratch, x, None, 4)
    assert got.shape == (9, 10) and got.dtype == np.float32
    assert not any(np.shares_memory(got, a) for a in (params, scratch, x))


# ---- argument errors -----------------------------------------------------------------------

def array_args(name):
    """Names of the array arguments of `name`, outputs included."""
    outs, ins = _SPECS[name]
    return [*outs, *(k for k, v in ins.items() if isinstance(v, np.ndarray))]


def filled_outputs(name):
    """All arguments of `name`, with outputs preallocated (so they can be replaced too)."""
    outs, args = spec_args(name)
    if not outs:
        return args
    res = as_tuple(call(reference, name, args))
    return {**args, **{o: np.zeros_like(r) for o, r in zip(outs, res, strict=True)}}


ARRAY_ARGS = [(n, a) for n in KERNELS for a in array_args(n)]
ARRAY_IDS = [f"{n}-{a}" for n, a in ARRAY_ARGS]


@pytest.mark.parametrize(("name", "arg"), ARRAY_ARGS, ids=ARRAY_IDS)
def test_float64_is_a_type_error_naming_the_argument(name, arg):
    args = filled_outputs(name)
    args[arg] = args[arg].astype(np.float64)
    with pytest.raises(TypeError, match=rf"^{arg}\b.*float32"):
        call(fast, name, args)


def non_contiguous(a, how):
    if how == "transposed":
        return np.ascontiguousarray(a.T).T
    wide = np.repeat(a, 2, axis=-1)
    return wide[..., ::2]


# A transposed 1-D array is still contiguous: 1-D arguments are only sliced.
NON_CONTIGUOUS = [(n, a, how) for n, a in ARRAY_ARGS for how in ("transposed", "sliced")
                  if how == "sliced" or filled_outputs(n)[a].ndim == 2]


@pytest.mark.parametrize(("name", "arg", "how"), NON_CONTIGUOUS,
                         ids=[f"{n}-{a}-{h}" for n, a, h in NON_CONTIGUOUS])
def test_non_contiguous_is_a_value_error(name, arg, how):
    args = filled_outputs(name)
    view = non_contiguous(args[arg], how)
    assert not view.flags.c_contiguous and view.shape == args[arg].shape
    args[arg] = view
    with pytest.raises(ValueError, match=rf"^{arg} must be C-contiguous"):
        call(fast, name, args)


@pytest.mark.parametrize(("name", "arg"), ARRAY_ARGS, ids=ARRAY_IDS)
def test_empty_array_is_a_value_error(name, arg):
    args = filled_outputs(name)
    args[arg] = np.zeros((0, *args[arg].shape[1:]), np.float32)
    with pytest.raises(ValueError, match=rf"^{arg} is empty"):
        call(fast, name, args)


def test_empty_batch_is_a_value_error():
    with pytest.raises(ValueError, match="empty"):
        fast.dense_forward(np.zeros((0, 10), np.float32), np.zeros((0, 33), np.float32),
                           np.zeros((33, 10), np.float32), np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="empty"):
        fast.sigmoid_forward(None, np.zeros((0, 5), np.float32))
    with pytest.raises(ValueError, match="empty"):
        fast.sgd_update(np.zeros(0, np.float32), np.zeros(0, np.float32), 0.1)


READ_ONLY = [(n, o) for n in KERNELS_WITH_OUTPUTS for o in spec_args(n)[0]]
READ_ONLY += [("sgd_update", "params")]


@pytest.mark.parametrize(("name", "arg"), READ_ONLY, ids=[f"{n}-{a}" for n, a in READ_ONLY])
def test_read_only_output_is_a_value_error(name, arg):
    args = filled_outputs(name)
    args[arg].setflags(write=False)
    before = args[arg].copy()
    with pytest.raises(ValueError, match=rf"^{arg} is read-only"):
        call(fast, name, args)
    np.testing.assert_array_equal(args[arg], before)


def f32(*shape):
    return np.ones(shape, np.float32)


# (call, substrings the message must contain)
SHAPE_MISMATCHES = {
    "dense_forward inp/weight": (lambda: fast.dense_forward(None, f32(7, 33), f32(32, 10),
                                                            f32(10)), ["(7, 33)", "(32, 10)"]),
    "dense_forward weight/bias": (lambda: fast.dense_forward(None, f32(7, 33), f32(33, 10),
                                                             f32(11)), ["(33, 10)", "(11,)"]),
    "dense_forward out": (lambda: fast.dense_forward(f32(7, 11), f32(7, 33), f32(33, 10),
                                                     f32(10)), ["(7, 11)", "(7, 10)"]),
    "dense_forward 1-D inp": (lambda: fast.dense_forward(None, f32(33), f32(33, 10), f32(10)),
                              ["inp", "(33,)"]),
    "dense_backward inp/weight": (lambda: fast.dense_backward(None, None, None, f32(7, 10),
                                                              f32(7, 33), f32(32, 10)),
                                  ["(7, 33)", "(32, 10)"]),
    "dense_backward dout": (lambda: fast.dense_backward(None, None, None, f32(7, 11),
                                                        f32(7, 33), f32(33, 10)),
                            ["(7, 11)", "(7, 10)"]),
    "dense_backward dweight": (lambda: fast.dense_backward(None, f32(10, 33), None, f32(7, 10),
                                                           f32(7, 33), f32(33, 10)),
                               ["dweight", "(10, 33)", "(33, 10)"]),
    "sigmoid_backward": (lambda: fast.sigmoid_backward(None, f32(7, 33), f32(7, 32)),
                         ["(7, 33)", "(7, 32)"]),
    "relu_forward out": (lambda: fast.relu_forward(f32(7, 32), f32(7, 33)),
                         ["(7, 32)", "(7, 33)"]),
    "softmax_backward": (lambda: fast.softmax_backward(None, f32(7, 10), f32(10, 7)),
                         ["(7, 10)", "(10, 7)"]),
    "mse_forward": (lambda: fast.mse_forward(f32(7, 10), f32(7, 11)), ["(7, 10)", "(7, 11)"]),
    "mse_backward": (lambda: fast.mse_backward(None, f32(7, 10), f32(6, 10)),
                     ["(7, 10)", "(6, 10)"]),
    "crossentropy_forward": (lambda: fast.crossentropy_forward(f32(7, 10), f32(7, 9)),
                             ["(7, 10)", "(7, 9)"]),
    "crossentropy_softmax_backward": (
        lambda: fast.crossentropy_softmax_backward(None, f32(7, 10), f32(7, 9)),
        ["(7, 10)", "(7, 9)"]),
    "sgd_update": (lambda: fast.sgd_update(f32(10), f32(11), 0.1), ["(10,)", "(11,)"]),
    "count_correct": (lambda: fast.count_correct(f32(7, 10), f32(8, 10)),
                      ["(7, 10)", "(8, 10)"]),
}


@pytest.mark.parametrize("case", SHAPE_MISMATCHES)
def test_shape_mismatch_is_a_value_error_naming_both_shapes(case):
    func, parts = SHAPE_MISMATCHES[case]
    with pytest.raises(ValueError) as info:
        func()
    for part in parts:
        assert part in str(info.value), f"{case}: {part!r} not in {str(info.value)!r}"


# ---- threads and the raw GEMM --------------------------------------------------------------

@pytest.fixture
def restore_kernel_threads():
    try:
        yield
    finally:
        fast.set_num_threads(0)


@pytest.mark.skipif(not fast.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("shape", ((1000, 785, 128), (33, 785, 129)), ids=("1000x785x128",
                                                                           "33x785x129"))
def test_thread_count_gives_bit_identical_results(simd_path, restore_kernel_threads, shape):
    batch, c, oc = shape
    rng = rng_for("threads", shape)
    inp, weight, bias = varied(rng, (batch, c)), varied(rng, (c, oc)), varied(rng, (oc,))
    dout = varied(rng, (batch, oc))
    results = {}
    for threads in (1, 2):
        fast.set_num_threads(threads)
        assert fast.get_num_threads() == threads
        results[threads] = (fast.dense_forward(None, inp, weight, bias),
                            *fast.dense_backward(None, None, None, dout, inp, weight))
    for name, one, two in zip(("out", "dinp", "dweight", "dbias"), results[1], results[2],
                              strict=True):
        assert np.array_equal(one.view(np.uint32), two.view(np.uint32)), (
            f"[{simd_path}] {name} of {shape} differs between 1 and 2 threads "
            f"(max |diff| {np.max(np.abs(one - two)):.3g})")


@pytest.mark.parametrize("k", (48, 129))
def test_input_gradient_rows_do_not_depend_on_their_tile(simd_path, k):
    """dinp = dout @ W.T sums each row in register tiles, or alone at the edges (and the
    AVX-512 path sums a full tile's 16 dot products together): a row's bits must be the same
    either way, or results would change with how threads split the rows."""
    rng = rng_for("nt-tiles", k)
    dout, inp, weight = varied(rng, (9, k)), varied(rng, (9, 37)), varied(rng, (37, k))
    whole = fast.dense_backward(None, None, None, dout, inp, weight)[0]
    for i in range(9):
        alone = fast.dense_backward(None, None, None, dout[i:i + 1], inp[i:i + 1], weight)[0]
        assert np.array_equal(alone.view(np.uint32), whole[i:i + 1].view(np.uint32)), (
            f"[{simd_path}] row {i} of dout @ W.T (k={k}) differs alone and in a tile")


GEMM_SHAPES = ((1, 1, 1), (17, 33, 65), (33, 785, 129), (256, 256, 256))


@pytest.mark.parametrize("mkn", GEMM_SHAPES, ids=["x".join(map(str, s)) for s in GEMM_SHAPES])
def test_sgemm_matches_float64_matmul(simd_path, mkn):
    m, k, n = mkn
    rng = rng_for("sgemm", mkn)
    a, b = varied(rng, (m, k), -1, 1), varied(rng, (k, n), -1, 1)
    c_buf, c = guarded(np.zeros((m, n), np.float32))
    fast.sgemm(c, a, b)
    what = f"sgemm[{simd_path}] {m}x{k}x{n}"
    assert_guard_intact(c_buf, what)
    assert_close(c, a.astype(np.float64) @ b.astype(np.float64), FORWARD_RTOL, what)


def test_sgemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sgemm"):
        fast.sgemm(f32(3, 4), f32(3, 5), f32(6, 4))
