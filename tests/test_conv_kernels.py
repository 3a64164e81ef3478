"""The convnet's kernels (conv2d, maxpool2d, dropout) and the optimizers (momentum, Adam)
against their NumPy twins, on awkward shapes, under every SIMD path this CPU runs.

Shapes: 1x1 and full-size kernels, stride 2 (and uneven strides), "same" padding with odd and
even kernels, 1/3/7/33 channels, batches of 1, 7 and 128, pool windows that do and do not
divide their input, overlapping pool windows. Tolerances from tests/tolerances.py.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from tolerances import BACKWARD_RTOL, FORWARD_RTOL, assert_close

from mnistnet import fast, reference

BATCHES = (1, 7, 128)
# (H, W, C, KH, KW, OC, strides, padding)
CONV_CASES = {
    "1x1": (5, 5, 1, 1, 1, 3, (1, 1), "valid"),
    "1x1-same-stride2": (7, 6, 3, 1, 1, 7, (2, 2), "same"),
    "full-size": (6, 6, 3, 6, 6, 4, (1, 1), "valid"),
    "stride2": (7, 7, 7, 3, 3, 5, (2, 2), "valid"),
    "same-odd": (7, 6, 3, 3, 3, 7, (1, 1), "same"),
    "same-even": (8, 7, 7, 2, 4, 3, (1, 1), "same"),
    "same-stride2-33ch": (9, 9, 33, 3, 3, 33, (2, 2), "same"),
    "uneven-strides": (5, 6, 3, 2, 3, 1, (2, 1), "same"),
    "convnet-conv1": (28, 28, 1, 3, 3, 32, (1, 1), "valid"),
    "convnet-conv2": (13, 13, 32, 3, 3, 64, (1, 1), "valid"),
}
# (H, W, C, pool, strides, padding)
POOL_CASES = {
    "divides": (6, 6, 3, (2, 2), None, "valid"),
    "remainder": (7, 7, 3, (2, 2), None, "valid"),
    "remainder-same": (7, 7, 3, (2, 2), None, "same"),
    "overlapping": (5, 5, 7, (3, 3), (1, 1), "valid"),
    "overlapping-same-33ch": (6, 5, 33, (3, 2), (2, 1), "same"),
    "1x1": (1, 1, 1, (1, 1), None, "valid"),
    "3x3-tiles-remainder": (10, 9, 5, (3, 3), None, "valid"),
    "gaps": (7, 8, 2, (2, 2), (3, 3), "valid"),
    "convnet-pool1": (26, 26, 32, (2, 2), None, "valid"),
    "convnet-pool2": (11, 11, 64, (2, 2), None, "valid"),
}


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def normal(rng, shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv_arrays(case, batch):
    h, w, c, kh, kw, oc, strides, padding = CONV_CASES[case]
    rng = rng_for("conv", case, batch)
    inp = normal(rng, (batch, h, w, c))
    weight = normal(rng, (kh, kw, c, oc), 1 / np.sqrt(kh * kw * c))
    bias = normal(rng, (oc,), 0.1)
    return inp, weight, bias, strides, padding


# ---- conv2d ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_reference(simd_path, case, batch):
    """The output, and the padded input the windows read (kept for the backward pass), which
    im2col over it (valid windows) turns into the layer's patches."""
    inp, weight, bias, strides, padding = conv_arrays(case, batch)
    shape = (batch, *reference.conv2d_padded_shape(inp.shape[1:], weight.shape[:2], strides,
                                                   padding))
    want_padded = np.full(shape, np.nan, np.float32)
    want = reference.conv2d_forward(None, want_padded, inp, weight, bias, strides, padding)
    padded = np.full(shape, np.nan, np.float32)
    got = fast.conv2d_forward(None, padded, inp, weight, bias, strides, padding)
    what = f"conv2d_forward[{simd_path}] {case} batch {batch}"
    np.testing.assert_array_equal(padded, want_padded, err_msg=what + " padded")
    np.testing.assert_array_equal(
        reference.im2col(None, padded, weight.shape[:2], strides, "valid"),
        reference.im2col(None, inp, weight.shape[:2], strides, padding), err_msg=what)
    assert_close(got, want, FORWARD_RTOL, what)
    # with the ReLU on each tile (the network's conv layers with activation="relu"): that
    # output, bit for bit, through relu_forward's rule
    fused = fast.conv2d_forward(None, padded, inp, weight, bias, strides, padding, relu=True)
    np.testing.assert_array_equal(fused, fast.relu_forward(None, got), err_msg=what + " relu")
    assert_close(fused, reference.relu_forward(None, want), FORWARD_RTOL, what + " relu")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_matches_reference(simd_path, case, batch):
    inp, weight, bias, strides, padding = conv_arrays(case, batch)
    shape = (batch, *reference.conv2d_padded_shape(inp.shape[1:], weight.shape[:2], strides,
                                                   padding))
    padded = np.empty(shape, np.float32)
    out = reference.conv2d_forward(None, padded, inp, weight, bias, strides, padding)
    dout = normal(rng_for("dout", case, batch), out.shape)
    want = reference.conv2d_backward(None, None, None, dout, padded, inp, weight, strides,
                                     padding)
    got = fast.conv2d_backward(None, None, None, dout, padded, inp, weight, strides, padding)
    for name, g, w in zip(("dinp", "dweight", "dbias"), got, want, strict=True):
        assert_close(g, w, BACKWARD_RTOL, f"conv2d_backward[{simd_path}] {name} {case} "
                                          f"batch {batch}")


def test_conv2d_forward_is_the_cross_correlation_keras_computes():
    """The twin itself, against the definition written out: out[n, i, j, o] = b[o] + the sum
    over the kernel of w[di, dj, c, o] * x[n, i*sh - pt + di, j*sw - pl + dj, c], zero
    outside the image (TensorFlow's "same": the extra padding row goes below)."""
    inp, weight, bias, strides, padding = conv_arrays("same-even", 2)
    inp, weight, bias = (a.astype(np.float64) for a in (inp, weight, bias))
    out = reference.conv2d_forward(None, None, inp, weight, bias, strides, padding)
    oh, pt = reference.window_geometry(inp.shape[1], weight.shape[0], strides[0], padding)
    ow, pl = reference.window_geometry(inp.shape[2], weight.shape[1], strides[1], padding)
    assert (pt, pl) == (0, 1) and out.shape == (2, oh, ow, weight.shape[3])
    want = np.zeros(out.shape)
    for n, i, j in np.ndindex(2, oh, ow):
        want[n, i, j] = bias
        for di, dj in np.ndindex(*weight.shape[:2]):
            r, c = i * strides[0] - pt + di, j * strides[1] - pl + dj
            if 0 <= r < inp.shape[1] and 0 <= c < inp.shape[2]:
                want[n, i, j] += inp[n, r, c] @ weight[di, dj]
    assert_close(out, want, FORWARD_RTOL, "conv2d_forward vs its definition")


def test_conv2d_arguments_are_checked():
    inp, weight, bias, _, _ = conv_arrays("stride2", 1)
    with pytest.raises(ValueError, match="window 9 is larger than its input 7"):
        fast.conv2d_forward(None, None, inp, np.zeros((9, 9, 7, 5), np.float32), bias)
    with pytest.raises(ValueError, match=r"inp has shape \(1, 7, 7, 7\) but weight"):
        fast.conv2d_forward(None, None, inp, np.zeros((3, 3, 2, 5), np.float32), bias)
    with pytest.raises(ValueError, match="unknown padding 'full'"):
        fast.conv2d_forward(None, None, inp, weight, bias, padding="full")
    with pytest.raises(ValueError, match="strides must be an int >= 1"):
        fast.conv2d_forward(None, None, inp, weight, bias, strides=(0, 1))
    with pytest.raises(ValueError, match="padded has shape"):
        fast.conv2d_forward(None, np.zeros((1, 3, 3, 62), np.float32), inp, weight, bias)


# ---- maxpool2d ---------------------------------------------------------------------------------

def pool_input(case, batch):
    h, w, c, pool, strides, padding = POOL_CASES[case]
    # Normal values: no ties within a window (almost surely), so the argmax is unique.
    return normal(rng_for("pool", case, batch), (batch, h, w, c)), pool, strides, padding


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_matches_reference(simd_path, case, batch):
    inp, pool, strides, padding = pool_input(case, batch)
    want, want_argmax = reference.maxpool2d_forward(None, None, inp, pool, strides, padding)
    got, argmax = fast.maxpool2d_forward(None, None, inp, pool, strides, padding)
    what = f"maxpool2d[{simd_path}] {case} batch {batch}"
    np.testing.assert_array_equal(got, want, err_msg=what)
    np.testing.assert_array_equal(argmax, want_argmax, err_msg=what + " argmax")
    # The max is the input at its argmax.
    flat = inp.reshape(batch, -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, argmax.reshape(batch, -1), 1),
                                  got.reshape(batch, -1), err_msg=what + " value at argmax")
    dout = normal(rng_for("pool-dout", case, batch), got.shape)
    want_dinp = reference.maxpool2d_backward(None, dout, want_argmax, inp.shape)
    assert_close(fast.maxpool2d_backward(None, dout, argmax, inp.shape), want_dinp,
                 BACKWARD_RTOL, what + " backward")
    # with the window: the network's path (windows that tile the image write each input once,
    # and zero those outside every window), into a buffer holding an earlier step's values
    stale = np.full(inp.shape, np.nan, np.float32)
    assert_close(fast.maxpool2d_backward(stale, dout, argmax, inp.shape, pool, strides, padding),
                 want_dinp, BACKWARD_RTOL, what + " backward, window given")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_backward_through_a_relu_is_relu_backward_after(simd_path, case, batch):
    """With relu_input, the pool's backward applies the relu's too, in the same pass: the
    bits of relu_backward after it (the network's path for a pool after a relu), and the
    twin's values. Half the inputs are <= 0 (some whole windows, some -0 and +0 cells)."""
    inp, pool, strides, padding = pool_input(case, batch)
    relu_out = fast.relu_forward(None, inp)
    relu_out[..., ::3] = np.where(relu_out[..., ::3] > 0, -0.0, relu_out[..., ::3])
    _, argmax = fast.maxpool2d_forward(None, None, relu_out, pool, strides, padding)
    dout = normal(rng_for("pool-relu-dout", case, batch), (batch, *argmax.shape[1:]))
    dout[..., ::2] = -0.0
    for window in ((), (pool, strides, padding)):
        what = f"maxpool2d[{simd_path}] {case} batch {batch} window {window}"
        apart = fast.maxpool2d_backward(None, dout, argmax, inp.shape, *window)
        apart = fast.relu_backward(None, relu_out, apart)
        fused = fast.maxpool2d_backward(None, dout, argmax, inp.shape, *window,
                                        relu_input=relu_out)
        np.testing.assert_array_equal(fused.view(np.uint32), apart.view(np.uint32),
                                      err_msg=what)
        want = reference.maxpool2d_backward(None, dout, argmax, inp.shape, *window,
                                            relu_input=relu_out)
        assert_close(fused, want, BACKWARD_RTOL, what + " against the twin")


def test_maxpool2d_takes_the_first_maximum_of_a_tie():
    """A window of equal values (relu's zeros): the first cell in row-major order wins, in
    both backends, and the gradient goes there only."""
    inp = np.zeros((1, 4, 4, 2), np.float32)
    inp[0, 1, 1, 1] = 1.0  # channel 1's second window from the top left has a unique max
    for backend in (fast, reference):
        out, argmax = backend.maxpool2d_forward(None, None, inp, (2, 2))
        assert argmax[0, 0, 0, 0] == 0  # (0, 0), channel 0
        assert argmax[0, 0, 0, 1] == (1 * 4 + 1) * 2 + 1
        assert argmax[0, 1, 1, 0] == (2 * 4 + 2) * 2
        dinp = backend.maxpool2d_backward(None, np.ones_like(out), argmax, inp.shape)
        assert dinp.sum() == out.size and dinp[0, 0, 0, 0] == 1 and dinp[0, 0, 1, 0] == 0


def test_maxpool2d_padding_never_wins():
    """'same' pads with nothing that can be the max: an all-negative border window picks a
    real (negative) cell."""
    inp = -np.arange(1, 1 + 3 * 3, dtype=np.float32).reshape(1, 3, 3, 1)
    for backend in (fast, reference):
        out, argmax = backend.maxpool2d_forward(None, None, inp, (2, 2), padding="same")
        assert out.shape == (1, 2, 2, 1)
        np.testing.assert_array_equal(out[0, :, :, 0], [[-1, -3], [-7, -9]])
        assert argmax.min() >= 0 and argmax.max() < 9


def test_maxpool2d_backward_refuses_an_argmax_outside_its_window():
    dout = np.ones((1, 2, 2, 1), np.float32)
    argmax = np.array([0, 2, 8, 15], np.int32).reshape(1, 2, 2, 1)
    fast.maxpool2d_backward(None, dout, argmax, (1, 4, 4, 1), (2, 2))
    argmax[0, 0, 0, 0] = 2  # the next window's cell
    with pytest.raises(ValueError, match="a cell of its own window"):
        fast.maxpool2d_backward(None, dout, argmax, (1, 4, 4, 1), (2, 2))


def test_maxpool2d_backward_keeps_the_sign_of_a_zero_gradient_as_the_scatter_does():
    """0 + (-0) is +0: a window's -0 gradient reaches its argmax as +0 on either path."""
    inp = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out, argmax = fast.maxpool2d_forward(None, None, inp, (2, 2))
    dout = np.full(out.shape, -0.0, np.float32)
    for window in ((), ((2, 2),)):
        dinp = fast.maxpool2d_backward(None, dout, argmax, inp.shape, *window)
        assert not np.signbit(dinp).any()


def test_maxpool2d_backward_refuses_an_argmax_outside_the_image():
    dout = np.ones((1, 2, 2, 1), np.float32)
    argmax = np.array([0, 1, 2, 16], np.int32).reshape(1, 2, 2, 1)
    with pytest.raises(ValueError, match="argmax must index the 16 elements"):
        fast.maxpool2d_backward(None, dout, argmax, (1, 4, 4, 1))


# ---- dropout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", (0.0, 0.1, 0.5, 0.9))
@pytest.mark.parametrize("shape", ((1, 1), (7, 3), (1, 1600), (128, 1600), (2, 5, 5, 64)))
def test_dropout_matches_reference_bit_for_bit(shape, rate):
    rng = rng_for("dropout", shape, rate)
    inp, dout = normal(rng, shape), normal(rng, shape)
    key = fast.dropout_key(7, 2, 11, 5)
    assert key == reference.dropout_key(7, 2, 11, 5)
    out, mask = fast.dropout_forward(None, None, inp, rate, key)
    want, want_mask = reference.dropout_forward(None, None, inp, rate, key)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(fast.dropout_backward(None, dout, mask),
                                  reference.dropout_backward(None, dout, want_mask))
    scale = np.float32(1) / (np.float32(1) - np.float32(rate))
    assert set(np.unique(mask)) <= {np.float32(0), scale}


def test_dropout_drops_the_rate_and_keys_differ():
    inp = np.ones((128, 1600), np.float32)
    masks = {}
    for layer in (5, 6):
        key = reference.dropout_key(0, 0, 0, layer)
        _, masks[layer] = fast.dropout_forward(None, None, inp, 0.5, key)
        dropped = float(np.mean(masks[layer] == 0))
        assert abs(dropped - 0.5) < 0.01, dropped
    assert not np.array_equal(masks[5], masks[6])
    keys = {reference.dropout_key(s, e, t, 1) for s in range(3) for e in range(3)
            for t in range(3)}
    assert len(keys) == 27


def test_dropout_rate_is_checked():
    with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\), got 1.0"):
        fast.dropout_forward(None, None, np.ones(3, np.float32), 1.0, 0)


# ---- optimizers --------------------------------------------------------------------------------

SIZES = (1, 7, 33, 1000, 34826)


@pytest.mark.parametrize("nesterov", (False, True))
@pytest.mark.parametrize("n", SIZES)
def test_momentum_update_matches_reference(n, nesterov):
    rng = rng_for("momentum", n, nesterov)
    params, grads, velocity = normal(rng, n), normal(rng, n), normal(rng, n, 0.1)
    want_p, want_v = params.copy(), velocity.copy()
    reference.momentum_update(want_p, grads, want_v, 0.05, 0.9, nesterov)
    got = fast.momentum_update(params, grads, velocity, 0.05, 0.9, nesterov)
    assert got is params
    np.testing.assert_array_equal(velocity, want_v)
    np.testing.assert_array_equal(params, want_p)


@pytest.mark.parametrize("step", (1, 2, 1000))
@pytest.mark.parametrize("n", SIZES)
def test_adam_update_matches_reference(n, step):
    rng = rng_for("adam", n, step)
    params, grads = normal(rng, n), normal(rng, n)
    m, v = normal(rng, n, 0.1), np.abs(normal(rng, n, 0.1))
    want = [a.copy() for a in (params, m, v)]
    reference.adam_update(want[0], grads, want[1], want[2], 0.001, 0.9, 0.999, 1e-7, step)
    got = fast.adam_update(params, grads, m, v, 0.001, 0.9, 0.999, 1e-7, step)
    assert got is params
    for name, g, w in zip(("params", "m", "v"), (params, m, v), want, strict=True):
        np.testing.assert_array_equal(g, w, err_msg=f"adam {name}, n {n}, step {step}")


def test_optimizers_keep_a_weight_that_would_overflow():
    for update in (lambda p, g: fast.momentum_update(p, g, np.zeros(2, np.float32), 1e38, 0.5),
                   lambda p, g: reference.momentum_update(p, g, np.zeros(2, np.float32), 1e38,
                                                          0.5)):
        params = np.array([3e38, 1.0], np.float32)
        with np.errstate(over="ignore"):
            update(params, np.array([-10.0, 1e-38], np.float32))
        assert params[0] == np.float32(3e38) and np.isfinite(params).all()


def test_adam_step_must_be_positive():
    a = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="step must be >= 1"):
        fast.adam_update(a, a, a.copy(), a.copy(), 0.001, 0.9, 0.999, 1e-7, 0)


def test_conv2d_forward_relu_in_registers_keeps_relu_forwards_rule_for_nan(simd_path):
    """The ReLU applied to each output tile in registers is relu_forward's rule, x <= 0 ? 0 :
    x, on every path: NaN stays NaN (a NaN pixel spoils the windows that read it), and what
    is <= 0 becomes +0."""
    rng = np.random.default_rng(7)
    inp = rng.standard_normal((3, 9, 9, 1)).astype(np.float32)
    inp[1, 4, 4, 0] = np.nan
    weight = rng.standard_normal((3, 3, 1, 24)).astype(np.float32)
    weight[..., :5] = 0.0  # these filters give bias exactly: +0, -0 and negative ones
    bias = rng.standard_normal(24).astype(np.float32)
    bias[:3] = (0.0, -0.0, -1.0)
    padded = np.empty((3, *reference.conv2d_padded_shape((9, 9, 1), (3, 3), (1, 1), "valid")),
                      np.float32)
    plain = fast.conv2d_forward(None, padded, inp, weight, bias, 1, "valid")
    fused = fast.conv2d_forward(None, padded, inp, weight, bias, 1, "valid", relu=True)
    want = fast.relu_forward(None, plain)
    assert np.isnan(fused[1]).any() and not np.isnan(fused[0]).any()
    np.testing.assert_array_equal(fused, want)
    assert not np.signbit(fused[np.isfinite(fused)]).any()  # no -0 survives
