"""NumPy twin of every compiled kernel: the readable statement of the maths.

Same names and argument order as mnistnet.fast (the compiled backend's Python face):
outputs first (None allocates them), then inputs, then weights. Arrays are float32, as in the
compiled kernels; losses are accumulated in float64, as there. Derivations:

* dense:   out = inp @ W + b;  dinp = dout @ W.T;  dW = inp.T @ dout;  db = sum_rows(dout).
* sigmoid: s = 1 / (1 + e^-x);  ds/dx = s (1 - s), written from the forward output.
* relu:    ds/dx = 1 where the output is > 0, else 0.
* softmax: J^T g = s * (g - <g, s>) per row.
* MSE (Keras): L = mean_rows(mean_cols((p - y)^2));  dL/dp = 2 (p - y) / (B C).
  After a sigmoid this is chained through sigmoid_backward: MSE + sigmoid has no shortcut.
* Cross-entropy (Keras, on probabilities): L = -mean_rows(sum(y * log(clip(p / sum(p)))))
  with the clip to [1e-7, 1 - 1e-7]. With softmax outputs and rows of y summing to 1, the
  gradient w.r.t. the softmax *input* is (p - y) / B: the fused shortcut, exact for
  softmax + CE (likewise sigmoid + binary CE, identity + squared error), not for other pairs.
* SGD:     params -= lr * grads.
"""

from __future__ import annotations

import itertools

import numpy as np

ACTIVATIONS = {"linear": 0, "sigmoid": 1, "relu": 2, "softmax": 3}
LOSSES = {"mse": 0, "categorical_crossentropy": 1}
EPOCH_DONE, EPOCH_NONFINITE_LOSS, EPOCH_INTERRUPTED, EPOCH_NONFINITE_INPUT = 0, 1, 2, 3
CE_EPSILON = np.float32(1e-7)


def _out(out, shape):
    return np.empty(shape, dtype=np.float32) if out is None else out


# ---- dense ---------------------------------------------------------------------------------

def dense_forward(out, inp, weight, bias):
    """out = inp @ weight + bias.   out (B, OC), inp (B, C), weight (C, OC), bias (OC,)"""
    out = _out(out, (inp.shape[0], weight.shape[1]))
    np.matmul(inp, weight, out=out)
    out += bias
    return out


def dense_backward(dinp, dweight, dbias, dout, inp, weight):
    """dinp = dout @ weight.T, dweight = inp.T @ dout, dbias = column sums of dout."""
    dinp = _out(dinp, inp.shape)
    dweight = _out(dweight, weight.shape)
    dbias = _out(dbias, (weight.shape[1],))
    np.matmul(dout, weight.T, out=dinp)
    np.matmul(inp.T, dout, out=dweight)
    np.sum(dout, axis=0, out=dbias)
    return dinp, dweight, dbias


# ---- activations ---------------------------------------------------------------------------

def linear_forward(out, inp):
    """out = inp."""
    out = _out(out, inp.shape)
    out[...] = inp
    return out


def linear_backward(dinp, out, dout):
    """dinp = dout."""
    dinp = _out(dinp, dout.shape)
    dinp[...] = dout
    return dinp


def sigmoid_forward(out, inp):
    """out = 1 / (1 + exp(-inp)), computed from exp(-|x|) so it never overflows."""
    out = _out(out, inp.shape)
    e = np.exp(-np.abs(inp))
    out[...] = np.where(inp >= 0, 1 / (1 + e), e / (1 + e))
    return out


def sigmoid_backward(dinp, out, dout):
    """dinp = dout * out * (1 - out)."""
    dinp = _out(dinp, out.shape)
    dinp[...] = dout * (out * (1 - out))
    return dinp


def relu_forward(out, inp):
    """out = max(inp, 0)."""
    out = _out(out, inp.shape)
    np.maximum(inp, 0, out=out)
    return out


def relu_backward(dinp, out, dout):
    """dinp = dout where out > 0, else 0."""
    dinp = _out(dinp, out.shape)
    dinp[...] = np.where(out > 0, dout, np.float32(0))
    return dinp


def softmax_forward(out, inp):
    """Row-wise softmax, max-shifted: exp(x - max) / sum(exp(x - max))."""
    out = _out(out, inp.shape)
    e = np.exp(inp - inp.max(axis=1, keepdims=True))
    out[...] = e / e.sum(axis=1, keepdims=True)
    return out


def softmax_backward(dinp, out, dout):
    """dinp = out * (dout - sum(dout * out, row))."""
    dinp = _out(dinp, out.shape)
    dot = np.sum(dout * out, axis=1, keepdims=True)
    dinp[...] = out * (dout - dot)
    return dinp


# ---- losses, SGD, metrics ------------------------------------------------------------------

def mse_forward(pred, target) -> float:
    """Keras' MSE: mean over outputs, then over the batch."""
    d = pred - target
    return float(np.sum(d * d, dtype=np.float64) / pred.size)


def mse_backward(dpred, pred, target):
    """dpred = 2 (pred - target) / (B C)."""
    dpred = _out(dpred, pred.shape)
    dpred[...] = np.float32(2.0 / pred.size) * (pred - target)
    return dpred


def crossentropy_forward(probs, target) -> float:
    """-mean over rows of sum(target * log(clip(p / sum(p), 1e-7, 1 - 1e-7)))."""
    p = probs / probs.sum(axis=1, keepdims=True)
    p = np.clip(p, CE_EPSILON, np.float32(1) - CE_EPSILON)
    terms = np.where(target != 0, target * np.log(p), np.float32(0))
    return float(-np.sum(terms, dtype=np.float64) / probs.shape[0])


def crossentropy_softmax_backward(dlogits, probs, target):
    """dlogits = (probs - target) / B, the gradient w.r.t. the softmax input."""
    dlogits = _out(dlogits, probs.shape)
    dlogits[...] = np.float32(1.0 / probs.shape[0]) * (probs - target)
    return dlogits


def sgd_update(params, grads, learning_rate):
    """params -= learning_rate * grads, in place; an element whose new value would be NaN or
    Inf keeps its old value (train_step then reports the step as non-finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        new = params - np.float32(learning_rate) * grads
    np.copyto(params, new, where=np.isfinite(new))
    return params


def _update_is_finite(params, grads, learning_rate) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(params - np.float32(learning_rate) * grads).all())


def count_correct(pred, target) -> int:
    """Rows where argmax(pred) == argmax(target)."""
    return int(np.sum(np.argmax(pred, axis=1) == np.argmax(target, axis=1)))


def all_finite(a) -> bool:
    """True if no element of the float array `a` is NaN or Inf, in one pass and without a
    temporary the size of `a`: any NaN or Inf makes the sum non-finite. Only when the sum
    itself overflows are the elements looked at, a block at a time."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(a, axis=None)):
            return True
    flat = a.reshape(-1)
    block = 1 << 20
    return all(np.isfinite(flat[i: i + block]).all() for i in range(0, flat.size, block))


# ---- the network ---------------------------------------------------------------------------

def buffer_sizes(sizes, rows, threads=1):
    """(n_params, n_acts, n_dacts): floats in the parameter block (and the gradient block),
    the activation block (input, each layer's output and the targets, `rows` rows each) and
    the activation-gradient block, for layer widths `sizes` (input first). Both backends,
    and the compiled Net, use this layout.

    The activation-gradient block ends with a workspace that only the compiled training
    kernels use (the reference ignores it): room for the first layer's weights and their
    gradient (2 * sizes[0] * sizes[1] floats; a narrow first layer trains on transposed
    copies there, a team splitting the first layer keeps each thread's columns there), then,
    with threads > 1, for each thread after the first, room for all the input rows of a batch
    and a copy of the parameter and gradient blocks."""
    sizes = [int(v) for v in sizes]
    n_params = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    n_dacts = rows * sum(sizes[1:]) + 2 * sizes[0] * sizes[1]
    if threads > 1:
        n_dacts += (threads - 1) * (rows * sizes[0] + 2 * n_params)
    return n_params, rows * (sum(sizes) + sizes[-1]), n_dacts


def team_threads(sizes, rows, n_dacts):
    """Threads an activation-gradient block of n_dacts floats has workspace for (at least 1):
    the inverse of buffer_sizes."""
    n_params, _, base = buffer_sizes(sizes, rows)
    sizes = [int(v) for v in sizes]
    return 1 + max(0, n_dacts - base) // (rows * sizes[0] + 2 * n_params)


def layer_views(flat, sizes):
    """[(W0, b0), (W1, b1), ...] as views into the flat parameter (or gradient) block."""
    views, off = [], 0
    for c, oc in itertools.pairwise(sizes):
        w = flat[off: off + c * oc].reshape(c, oc)
        b = flat[off + c * oc: off + c * oc + oc]
        views.append((w, b))
        off += c * oc + oc
    return views


_FORWARD = {0: linear_forward, 1: sigmoid_forward, 2: relu_forward, 3: softmax_forward}
_BACKWARD = {0: linear_backward, 1: sigmoid_backward, 2: relu_backward, 3: softmax_backward}


def _forward_all(params, sizes, act_codes, x):
    """Every layer's output for the rows of x (the input first)."""
    outs = [x]
    for (w, b), code in zip(layer_views(params, sizes), act_codes, strict=True):
        z = dense_forward(None, outs[-1], w, b)
        outs.append(_FORWARD[int(code)](z, z))
    return outs


def _backward_all(grads, outs, params, sizes, act_codes, loss, target):
    layers, L = layer_views(params, sizes), len(act_codes)
    grad_layers = layer_views(grads, sizes)
    probs = outs[-1]
    if loss == LOSSES["categorical_crossentropy"] and act_codes[-1] == ACTIVATIONS["softmax"]:
        dz = crossentropy_softmax_backward(None, probs, target)
    else:
        dz = mse_backward(None, probs, target)
        dz = _BACKWARD[int(act_codes[-1])](dz, probs, dz)
    for i in range(L - 1, -1, -1):
        (w, _), (gw, gb) = layers[i], grad_layers[i]
        dinp, _, _ = dense_backward(None, gw, gb, dz, outs[i], w)
        if i > 0:
            dz = _BACKWARD[int(act_codes[i - 1])](dinp, outs[i], dinp)


def _loss(loss, pred, target):
    if loss == LOSSES["categorical_crossentropy"]:
        return crossentropy_forward(pred, target)
    return mse_forward(pred, target)


def train_step(params, grads, acts, dacts, sizes, act_codes, loss, x, y, learning_rate):
    """One SGD step on the batch (x, y); returns the batch-mean loss (no update if NaN/Inf).
    acts and dacts are accepted for the compiled twin's signature; NumPy allocates its own."""
    outs = _forward_all(params, sizes, act_codes, x)
    value = _loss(loss, outs[-1], y)
    if np.isfinite(value):
        _backward_all(grads, outs, params, sizes, act_codes, loss, y)
        finite = _update_is_finite(params, grads, learning_rate)
        sgd_update(params, grads, learning_rate)
        if not finite:
            return np.inf
    return value


def train_epoch(params, grads, acts, dacts, sizes, act_codes, loss, x, y, perm,
                batch_size, learning_rate):
    """Minibatch SGD over x[perm] in order, batch_size rows at a time.

    Returns (loss_sum, correct, seen, batches, status): loss_sum is the sum over completed
    batches of batch-mean loss x rows (so loss_sum / seen is Keras' running average),
    correct counts rows whose pre-update prediction had the target's argmax, and status is
    EPOCH_DONE, or EPOCH_NONFINITE_LOSS when batch number `batches` had a NaN/Inf loss (its
    update not applied), or EPOCH_NONFINITE_INPUT when that batch's rows of x held NaN/Inf
    (checked as the batch is read, before anything is computed from it)."""
    loss_sum, correct, seen, batches = 0.0, 0, 0, 0
    for start in range(0, len(perm), batch_size):
        rows = perm[start: start + batch_size]
        xb, yb = x[rows], y[rows]
        if not all_finite(xb):
            return loss_sum, correct, seen, batches, EPOCH_NONFINITE_INPUT
        outs = _forward_all(params, sizes, act_codes, xb)
        value = _loss(loss, outs[-1], yb)
        if not np.isfinite(value):
            return loss_sum, correct, seen, batches, EPOCH_NONFINITE_LOSS
        _backward_all(grads, outs, params, sizes, act_codes, loss, yb)
        finite = _update_is_finite(params, grads, learning_rate)
        sgd_update(params, grads, learning_rate)
        if not finite:
            return loss_sum, correct, seen, batches, EPOCH_NONFINITE_LOSS
        loss_sum += value * len(rows)
        correct += count_correct(outs[-1], yb)
        seen += len(rows)
        batches += 1
    return loss_sum, correct, seen, batches, EPOCH_DONE


def predict(params, acts, sizes, act_codes, x, out, chunk):
    """Forward x into out (allocated if None), `chunk` rows at a time."""
    out = _out(out, (x.shape[0], sizes[-1]))
    for start in range(0, x.shape[0], chunk):
        out[start: start + chunk] = _forward_all(params, sizes, act_codes,
                                                 x[start: start + chunk])[-1]
    return out
