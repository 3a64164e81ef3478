"""The convnet's gradients against central differences: conv2d, maxpool2d (inputs without
ties) and dropout (a fixed mask) through the reference kernels in float64, then a small conv
net end to end through train_step of both float32 backends.

Every check refuses an analytic gradient that is (nearly) zero (gradcheck.check_gradient).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from gradcheck import central_differences, check_gradient
from networks import SGD
from tolerances import FLOAT32_GRAD_RTOL, FORWARD_RTOL, GRADCHECK_RTOL, assert_close

import mnistnet as mn
from mnistnet import fast, reference
from mnistnet.plan import Plan

# (H, W, C, KH, KW, OC, strides, padding)
CONV = {
    "valid": (5, 6, 2, 3, 2, 3, (1, 1), "valid"),
    "same-odd-stride2": (7, 5, 3, 3, 3, 2, (2, 2), "same"),
    "same-even": (6, 6, 1, 2, 4, 3, (1, 1), "same"),
    "1x1": (3, 4, 3, 1, 1, 2, (1, 1), "valid"),
}
# (H, W, C, pool, strides, padding)
POOL = {
    "divides": (4, 4, 2, (2, 2), None, "valid"),
    "remainder-same": (5, 5, 2, (2, 2), None, "same"),
    "overlapping": (5, 4, 1, (3, 2), (1, 1), "valid"),
}


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def conv64(x, w, b, strides, padding):
    """conv2d_forward of the reference in float64 (it allocates float32 when out is None),
    and the padded input it keeps for the backward pass."""
    kh, kw, _, oc = w.shape
    (oh, _), (ow, _) = (reference.window_geometry(x.shape[i + 1], w.shape[i], strides[i],
                                                  padding) for i in range(2))
    padded = np.empty((x.shape[0], *reference.conv2d_padded_shape(x.shape[1:], (kh, kw),
                                                                  strides, padding)))
    out = np.empty((x.shape[0], oh, ow, oc))
    return reference.conv2d_forward(out, padded, x, w, b, strides, padding), padded


def pool64(x, pool, strides, padding):
    strides = pool if strides is None else strides
    (oh, _), (ow, _) = (reference.window_geometry(x.shape[i + 1], pool[i], strides[i], padding)
                        for i in range(2))
    shape = (x.shape[0], oh, ow, x.shape[3])
    return reference.maxpool2d_forward(np.empty(shape), np.empty(shape, np.int32), x, pool,
                                       strides, padding)


@pytest.mark.parametrize("case", CONV)
def test_conv2d_gradients_float64(case):
    h, w, c, kh, kw, oc, strides, padding = CONV[case]
    rng = rng_for("conv", case)
    x, k, b = rng.normal(size=(2, h, w, c)), rng.normal(size=(kh, kw, c, oc)), rng.normal(
        size=oc)
    out, patches = conv64(x, k, b, strides, padding)
    g = rng.normal(size=out.shape)  # d loss / d out for loss = sum(out * g)
    dinp, dweight, dbias = reference.conv2d_backward(
        np.empty_like(x), np.empty_like(k), np.empty_like(b), g, patches, x, k, strides, padding)

    def loss(x, k, b):
        return float(np.sum(conv64(x, k, b, strides, padding)[0] * g))

    check_gradient(dinp, central_differences(lambda v: loss(v, k, b), x), GRADCHECK_RTOL,
                   f"conv2d {case} dinp")
    check_gradient(dweight, central_differences(lambda v: loss(x, v, b), k), GRADCHECK_RTOL,
                   f"conv2d {case} dweight")
    check_gradient(dbias, central_differences(lambda v: loss(x, k, v), b), GRADCHECK_RTOL,
                   f"conv2d {case} dbias")


@pytest.mark.parametrize("case", POOL)
def test_maxpool2d_gradient_float64(case):
    h, w, c, pool, strides, padding = POOL[case]
    rng = rng_for("pool", case)
    x = rng.permutation(2 * h * w * c).reshape(2, h, w, c) * 0.01  # distinct: no ties
    out, argmax = pool64(x, pool, strides, padding)
    g = rng.normal(size=out.shape)
    dinp = reference.maxpool2d_backward(np.empty_like(x), g, argmax, x.shape)
    numeric = central_differences(
        lambda v: float(np.sum(pool64(v, pool, strides, padding)[0] * g)), x, eps=1e-4)
    check_gradient(dinp, numeric, GRADCHECK_RTOL, f"maxpool2d {case}")


def test_dropout_gradient_with_a_fixed_mask_float64():
    rng = rng_for("dropout")
    x, g = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    key = reference.dropout_key(1, 2, 3, 4)

    def forward(v):
        return reference.dropout_forward(np.empty_like(v), np.empty_like(v), v, 0.3, key)

    _, mask = forward(x)
    assert 0 < np.count_nonzero(mask) < mask.size  # some kept, some dropped
    dinp = reference.dropout_backward(np.empty_like(g), g, mask)
    check_gradient(dinp, central_differences(lambda v: float(np.sum(forward(v)[0] * g)), x),
                   GRADCHECK_RTOL, "dropout")


# ---- a small conv net end to end ----------------------------------------------------------------

DROPOUT_LAYER = 4
SEED, EPOCH, STEP = 3, 1, 5  # the dropout key of the step


def small_convnet() -> Plan:
    """Every layer kind; sigmoid and linear activations, so no relu kink and no ties in the
    max-pool windows."""
    return Plan([mn.Conv2D(3, 3, padding="same", activation="sigmoid"), mn.MaxPool2D(2),
                 mn.Conv2D(4, 2, activation="linear"), mn.Flatten(), mn.Dropout(0.5),
                 mn.Dense(3, activation="softmax")], (6, 6, 2))


def loss64(plan, params, x, y):
    """The small conv net's batch-mean cross-entropy in float64, with the step's dropout."""
    def kernel(i):
        w, b = plan.layer_weights(params, i)
        return w.reshape(plan.layers[i].weight_shapes(plan.shapes[i])[0]), b

    a = x.reshape((x.shape[0], *plan.shapes[0]))
    a = 1 / (1 + np.exp(-conv64(a, *kernel(0), (1, 1), "same")[0]))
    a = pool64(a, (2, 2), None, "valid")[0]
    a = conv64(a, *kernel(2), (1, 1), "valid")[0].reshape(x.shape[0], -1)
    key = reference.dropout_key(SEED, EPOCH, STEP, DROPOUT_LAYER)
    a = reference.dropout_forward(np.empty_like(a), np.empty_like(a), a, 0.5, key)[0]
    w, b = plan.layer_weights(params, 5)
    z = a @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return -np.mean(np.sum(y * np.log(np.clip(p, 1e-7, 1 - 1e-7)), axis=1))


@pytest.mark.parametrize("backend", (fast, reference), ids=("fast", "reference"))
def test_small_convnet_gradient_matches_central_differences(simd_path, backend):
    plan = small_convnet()
    rng = rng_for("small convnet")
    model = mn.Model(plan.layers, input_shape=plan.input_shape, loss="categorical_crossentropy",
                     seed=2)
    params = model.params.copy()
    x = rng.random((5, 72), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 5)]
    numeric = central_differences(
        lambda p: loss64(plan, p, x.astype(np.float64), y.astype(np.float64)),
        params.astype(np.float64))
    grads = np.zeros_like(params)
    _, n_acts, n_dacts = plan.buffer_sizes(5)
    acts, dacts = np.zeros(n_acts, np.float32), np.zeros(n_dacts, np.float32)
    before, lr = params.copy(), np.float32(0.5)
    value = backend.train_step(plan, params, grads, np.zeros(0, np.float32), acts, dacts,
                               reference.LOSSES["categorical_crossentropy"], x, y, SGD, lr, 0,
                               (SEED, EPOCH, STEP))
    what = f"{backend.__name__}.train_step[{simd_path}] small convnet"
    assert_close(value, loss64(plan, before.astype(np.float64), x.astype(np.float64),
                               y.astype(np.float64)), FORWARD_RTOL, what + " loss")
    for i, row in enumerate(plan.table):
        if row["param"] >= 0:
            part = slice(int(row["param"]), int(row["param"] + row["n_param"]))
            check_gradient(grads[part], numeric[part], FLOAT32_GRAD_RTOL,
                           f"{what} layer {i} ({plan.layers[i]!r})")
    np.testing.assert_array_equal(params, before - lr * grads, err_msg=what + " update")
