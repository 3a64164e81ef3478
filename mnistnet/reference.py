"""NumPy twin of every compiled kernel: the readable statement of the maths.

Same names and argument order as mnistnet.fast (the compiled backend's Python face):
outputs first (None allocates them), then inputs, then weights. Arrays are float32, as in the
compiled kernels; losses are accumulated in float64, as there. Derivations:

* dense:   out = inp @ W + b;  dinp = dout @ W.T;  dW = inp.T @ dout;  db = sum_rows(dout).
* conv2d (channels last, Keras' kernel (kh, kw, c, oc)): the patches P (one row of kh*kw*c
  inputs per output pixel, zero padding included) times the kernel as a (kh*kw*c, oc)
  matrix: out = P @ W + b, so dW = P.T @ dout, db = sum(dout), and dinp is dP = dout @ W.T
  added back to the pixels each patch was read from (col2im).
* maxpool2d: out = max over each window; dinp gets dout at the window's first maximum
  (row-major order; the argmax is kept from the forward), summed where windows overlap.
* avgpool2d: out = the sum of each window's cells inside the image / their number (the
  padding is not counted, as Keras); dinp gets dout / that number at each of them. A
  global average pooling is one window the size of the image.
* dropout: out = inp * mask with mask = 0 (probability rate) or 1 / (1 - rate) (inverted
  dropout); dinp = dout * mask. The mask bits come from a counter-based generator:
  element e of a layer's batch is kept when the top 32 bits of mix64(key + e) are at least
  rate * 2^32, key = dropout_key(seed, epoch, step, layer); mix64 is SplitMix64's finaliser.
* translate (RandomTranslation): out[b, h, w] = inp[b, h - dy_b, w - dx_b], fill outside;
  dinp[b, h, w] = dout[b, h + dy_b, w + dx_b], 0 outside. Image b of a batch moves by
  dy_b = h0 + (top 32 bits of mix64(key + b)) mod (h1 - h0 + 1), dx_b = w0 + (low 32 bits)
  mod (w1 - w0 + 1), key = dropout_key(seed, epoch, step, layer).
* rescaling: out = inp * scale + offset, computed in float64 and rounded once to float32;
  dinp = dout * scale likewise.
* batchnorm, over the last axis, M = rows x pixels per channel: mean = sum(x) / M and
  var = sum((x - mean)^2) / M (sums in float64; x - mean in float32), invstd =
  1 / sqrt(var + epsilon) (float64, then float32), xhat = (x - mean) * invstd, out =
  gamma * xhat + beta; dbeta = sum(dout), dgamma = sum(dout * xhat) (float64 sums),
  dinp = (gamma * invstd / M) * ((M * dout - dbeta) - xhat * dgamma). In predict the moving
  averages stand in for mean and var; after a training step, moving = moving * momentum +
  batch * (1 - momentum).
* sigmoid: s = 1 / (1 + e^-x);  ds/dx = s (1 - s), written from the forward output.
* relu:    ds/dx = 1 where the output is > 0, else 0.
* tanh:    ds/dx = 1 - s^2, written from the forward output.
* softmax: J^T g = s * (g - <g, s>) per row (per pixel over the channels for conv outputs).
* MSE (Keras): L = mean_rows(mean_cols((p - y)^2));  dL/dp = 2 (p - y) / (B C).
  After a sigmoid this is chained through sigmoid_backward: MSE + sigmoid has no shortcut.
* Cross-entropy (Keras, on probabilities): L = -mean_rows(sum(y * log(clip(p / sum(p)))))
  with the clip to [1e-7, 1 - 1e-7]. With softmax outputs and rows of y summing to 1, the
  gradient w.r.t. the softmax *input* is (p - y) / B: the fused shortcut, exact for
  softmax + CE (likewise sigmoid + binary CE, identity + squared error), not for other pairs.
* Optimizers, Keras 3's update rules (float32, in this order of operations):
  - SGD:      w -= lr * g
  - momentum: v = momentum * v - lr * g;  w += v   (Nesterov: w += momentum * v - lr * g)
  - Adam:     m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2);
              alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)  (t: the step, from 1;
              computed in float64, then rounded to float32);
              w -= (m * alpha) / (sqrt(v) + epsilon)
  - AdamW:    w -= (w * weight_decay) * lr, then Adam's step (decoupled weight decay)
  - RMSprop:  v = rho * v + (1 - rho) * g^2;  d = v + epsilon (centered: a = rho * a +
              (1 - rho) * g, d = v - a^2 + epsilon);  step = (lr * g) / sqrt(d);
              w -= step (momentum: u = momentum * u + step, w -= u)
  L2 regularisation (kernel_regularizer) adds 2 * l2 * w to a kernel's gradient before the
  update (and l2 * sum(w^2) to the reported loss).
  An element whose new weight would be NaN or Inf keeps its old value (AdamW's: from before
  its decay, the whole step being rejected), and the update reports it (the epoch then
  stops).
"""

from __future__ import annotations

import numpy as np

from mnistnet.codes import (  # noqa: F401  (the codes both backends expose)
    ACTIVATIONS,
    CE_EPSILON,
    EPOCH_DONE,
    EPOCH_INTERRUPTED,
    EPOCH_NONFINITE_INPUT,
    EPOCH_NONFINITE_LOSS,
    LOSSES,
    OPTIMIZERS,
    conv2d_padded_shape,
    dropout_threshold,
    optimizer_slots,
    window_geometry,
)


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


def tanh_forward(out, inp):
    """out = tanh(inp)."""
    out = _out(out, inp.shape)
    np.tanh(inp, out=out)
    return out


def tanh_backward(dinp, out, dout):
    """dinp = dout * (1 - out^2)."""
    dinp = _out(dinp, out.shape)
    dinp[...] = dout * (np.float32(1) - out * out)
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




# ---- geometry ------------------------------------------------------------------------------

def _windows(shape, window, strides, padding):
    """((OH, OW), (PT, PL), (Hs, Ws)): output size, padding before, and the rows and columns
    the windows span (from the padded top-left corner) for an (H, W, ...) input."""
    (kh, kw), (sh, sw) = window, strides
    oh, pt = window_geometry(shape[0], kh, sh, padding)
    ow, pl = window_geometry(shape[1], kw, sw, padding)
    return (oh, ow), (pt, pl), ((oh - 1) * sh + kh, (ow - 1) * sw + kw)


def _padded(inp, pads, span, fill):
    """inp (B, H, W, C) placed at (PT, PL) in a (B, Hs, Ws, C) array of `fill`: the input as
    the windows see it (padding around it, rows past the last window cut off)."""
    (pt, pl), (hs, ws) = pads, span
    b, h, w, c = inp.shape
    out = np.full((b, hs, ws, c), fill, dtype=inp.dtype)
    rows, cols = min(h, hs - pt), min(w, ws - pl)
    out[:, pt: pt + rows, pl: pl + cols] = inp[:, :rows, :cols]
    return out


# ---- conv2d --------------------------------------------------------------------------------

def im2col(patches, inp, kernel_size, strides, padding):
    """patches (B, OH, OW, KH*KW*C): for each output pixel the KH x KW x C inputs its window
    reads, in Keras' kernel order (kernel row, kernel column, channel), zero outside the
    image.   inp (B, H, W, C)"""
    (oh, ow), pads, span = _windows(inp.shape[1:], kernel_size, strides, padding)
    kh, kw = kernel_size
    padded = _padded(inp, pads, span, 0.0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    windows = windows[:, :: strides[0], :: strides[1]]       # (B, OH, OW, C, KH, KW)
    patches = _out(patches, (inp.shape[0], oh, ow, kh * kw * inp.shape[3]))
    patches.reshape((*windows.shape[:3], kh, kw, inp.shape[3]))[...] = (
        windows.transpose(0, 1, 2, 4, 5, 3))
    return patches


def col2im(dinp, dpatches, kernel_size, strides, padding):
    """The adjoint of im2col: each patch's gradient added back to the pixels it was read
    from.   dinp (B, H, W, C) (its shape is required), dpatches (B, OH, OW, KH*KW*C)"""
    (oh, ow), pads, span = _windows(dinp.shape[1:], kernel_size, strides, padding)
    (kh, kw), (sh, sw), c = kernel_size, strides, dinp.shape[3]
    grad = np.zeros((dinp.shape[0], *span, c), dtype=dinp.dtype)
    dp = dpatches.reshape(dinp.shape[0], oh, ow, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            grad[:, i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw] += dp[:, :, :, i, j]
    (pt, pl), (h, w) = pads, dinp.shape[1:3]
    dinp[...] = 0
    rows, cols = min(h, span[0] - pt), min(w, span[1] - pl)
    dinp[:, :rows, :cols] = grad[:, pt: pt + rows, pl: pl + cols]
    return dinp


def _conv_padded(inp, kernel_size, strides, padding):
    """inp as the windows read it (conv2d_padded_shape), zeros in the padding."""
    shape = conv2d_padded_shape(inp.shape[1:], kernel_size, strides, padding)
    if shape == inp.shape[1:]:
        return inp
    _, pads, span = _windows(inp.shape[1:], kernel_size, strides, padding)
    return _padded(inp, pads, span, 0.0)


def _patches_of(padded, kernel_size, strides):
    """im2col of the padded input (its windows all inside it), in its own dtype."""
    (oh, ow), _, _ = _windows(padded.shape[1:], kernel_size, strides, "valid")
    patches = np.empty((padded.shape[0], oh, ow, kernel_size[0] * kernel_size[1]
                        * padded.shape[3]), padded.dtype)
    return im2col(patches, padded, kernel_size, strides, "valid")


def conv2d_forward(out, padded, inp, weight, bias, strides=(1, 1), padding="valid",
                   relu=False):
    """out = im2col(inp) @ weight + bias, then relu_forward if relu; padded receives inp as
    the windows read it (the backward pass reads it).   out (B, OH, OW, OC), padded
    (B, Hs, Ws, C) (see conv2d_padded_shape), inp (B, H, W, C), weight (KH, KW, C, OC),
    bias (OC,)"""
    kh, kw, c, oc = weight.shape
    padded = _out(padded, (inp.shape[0],
                           *conv2d_padded_shape(inp.shape[1:], (kh, kw), strides, padding)))
    padded[...] = _conv_padded(inp, (kh, kw), strides, padding)
    patches = _patches_of(padded, (kh, kw), strides)
    out = _out(out, (*patches.shape[:3], oc))
    np.matmul(patches.reshape(-1, kh * kw * c), weight.reshape(-1, oc), out=out.reshape(-1, oc))
    out += bias
    return relu_forward(out, out) if relu else out


def conv2d_backward(dinp, dweight, dbias, dout, padded, inp, weight, strides=(1, 1),
                    padding="valid"):
    """dweight = patches^T @ dout, dbias = sum of dout over images and pixels, dinp =
    col2im(dout @ weight^T), the patches those of padded (from conv2d_forward).
    dinp (B, H, W, C), dweight (KH, KW, C, OC), dbias (OC,), dout (B, OH, OW, OC),
    inp (B, H, W, C), weight as dweight. Returns (dinp, dweight, dbias)."""
    kh, kw, c, oc = weight.shape
    k = kh * kw * c
    patches = _patches_of(padded, (kh, kw), strides)
    rows, grad = patches.reshape(-1, k), dout.reshape(-1, oc)
    dweight = _out(dweight, weight.shape)
    dbias = _out(dbias, (oc,))
    np.matmul(rows.T, grad, out=dweight.reshape(k, oc))
    np.sum(grad, axis=0, out=dbias)
    dinp = _out(dinp, inp.shape)
    col2im(dinp, (grad @ weight.reshape(k, oc).T).reshape(patches.shape), (kh, kw), strides,
           padding)
    return dinp, dweight, dbias


# ---- maxpool2d -----------------------------------------------------------------------------

def maxpool2d_forward(out, argmax, inp, pool_size=(2, 2), strides=None, padding="valid"):
    """out = the maximum of each window (padding never wins), argmax = where it is, as the
    index (h * W + w) * C + c into the image; the first maximum in row-major window order.
    out (B, OH, OW, C), argmax int32 (B, OH, OW, C), inp (B, H, W, C)"""
    strides = pool_size if strides is None else strides
    (oh, ow), (pt, pl), span = _windows(inp.shape[1:], pool_size, strides, padding)
    b, _, w, c = inp.shape
    padded = _padded(inp, (pt, pl), span, -np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, pool_size, axis=(1, 2))
    windows = windows[:, :: strides[0], :: strides[1]].reshape(b, oh, ow, c, -1)
    best = np.argmax(windows, axis=-1)                        # (B, OH, OW, C)
    out = _out(out, (b, oh, ow, c))
    out[...] = np.take_along_axis(windows, best[..., None], axis=-1)[..., 0]
    rows = np.arange(oh)[:, None, None] * strides[0] - pt + best // pool_size[1]
    cols = np.arange(ow)[None, :, None] * strides[1] - pl + best % pool_size[1]
    argmax = np.empty((b, oh, ow, c), dtype=np.int32) if argmax is None else argmax
    argmax[...] = (rows * w + cols) * c + np.arange(c)
    return out, argmax


def maxpool2d_backward(dinp, dout, argmax, input_shape, pool_size=None, strides=None,
                       padding="valid", relu_input=None):
    """dinp = dout added at each window's argmax (zero elsewhere): a scatter-add, summed
    where windows overlap.   dinp (B, H, W, C) = input_shape, dout and argmax (B, OH, OW, C)
    The window (pool_size, strides, padding) does not change the result: the compiled kernel
    takes it to write each input once where windows tile the image. relu_input: the pool's
    input when it is a relu's output, whose backward is applied too (relu_backward's rule)."""
    dinp = _out(dinp, tuple(input_shape))
    b, n_img = dinp.shape[0], dinp[0].size
    where = (np.arange(b)[:, None] * n_img + argmax.reshape(b, -1)).reshape(-1)
    dinp.reshape(-1)[...] = np.bincount(where, weights=dout.reshape(-1), minlength=b * n_img)
    if relu_input is not None:
        dinp[...] = np.where(relu_input > 0, dinp, np.float32(0))
    return dinp


# ---- avgpool2d (AveragePooling2D, GlobalAveragePooling2D) ------------------------------------

def _window_cells(shape, pool_size, strides, padding):
    """((OH, OW), (PT, PL), span, counts): the output size, the padding before, the span of
    the windows and each window's number of cells inside the image (B=1, C=1 shaped)."""
    (oh, ow), pads, span = _windows(shape, pool_size, strides, padding)
    inside = _padded(np.ones((1, shape[0], shape[1], 1), np.float32), pads, span, 0.0)
    counts = np.zeros((1, oh, ow, 1), np.float32)
    for i, j in np.ndindex(*pool_size):
        counts += inside[:, i: i + (oh - 1) * strides[0] + 1: strides[0],
                         j: j + (ow - 1) * strides[1] + 1: strides[1]]
    return (oh, ow), pads, span, counts


def avgpool2d_forward(out, inp, pool_size=(2, 2), strides=None, padding="valid"):
    """out = the mean of each window's cells inside the image (the padding is not counted):
    their sum in row-major window order, divided by their number.
    out (B, OH, OW, C), inp (B, H, W, C)"""
    strides = pool_size if strides is None else strides
    (oh, ow), pads, span, counts = _window_cells(inp.shape[1:], pool_size, strides, padding)
    padded = _padded(inp, pads, span, 0.0)
    sums = np.zeros((inp.shape[0], oh, ow, inp.shape[3]), np.float32)
    for i, j in np.ndindex(*pool_size):
        sums += padded[:, i: i + (oh - 1) * strides[0] + 1: strides[0],
                       j: j + (ow - 1) * strides[1] + 1: strides[1]]
    out = _out(out, sums.shape)
    np.divide(sums, counts, out=out)
    return out


def avgpool2d_backward(dinp, dout, input_shape, pool_size=(2, 2), strides=None,
                       padding="valid"):
    """The adjoint: each output's gradient divided by its window's cell count, added to each
    of those cells.   dinp (B, H, W, C) = input_shape, dout (B, OH, OW, C)"""
    strides = pool_size if strides is None else strides
    b, h, w, c = input_shape
    (oh, ow), (pt, pl), span, counts = _window_cells((h, w, c), pool_size, strides, padding)
    share = dout / counts
    grad = np.zeros((b, *span, c), np.float32)
    for i, j in np.ndindex(*pool_size):
        grad[:, i: i + (oh - 1) * strides[0] + 1: strides[0],
             j: j + (ow - 1) * strides[1] + 1: strides[1]] += share
    dinp = _out(dinp, tuple(input_shape))
    dinp[...] = 0
    rows, cols = min(h, span[0] - pt), min(w, span[1] - pl)
    dinp[:, :rows, :cols] = grad[:, pt: pt + rows, pl: pl + cols]
    return dinp


# ---- dropout -------------------------------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def mix64(z):
    """SplitMix64's output function of z + golden gamma (uint64 arrays or scalars, wrapping)."""
    z = np.asarray(z, dtype=np.uint64) + _GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_key(seed, epoch, step, layer) -> int:
    """The counter-based key of one dropout layer's masks in one training step."""
    with np.errstate(over="ignore"):
        key = mix64(np.uint64(seed))
        for part in (epoch, step, layer):
            key = mix64(key ^ np.uint64(part))
    return int(key)


def dropout_forward(out, mask, inp, rate, key):
    """mask = 0 where element e (row-major over the batch) is dropped, else 1 / (1 - rate);
    out = inp * mask.   out, mask, inp (B, ...) float32"""
    mask = _out(mask, inp.shape)
    bits = mix64(np.uint64(key) + np.arange(inp.size, dtype=np.uint64)) >> np.uint64(32)
    scale = np.float32(1) / (np.float32(1) - np.float32(rate))
    mask[...] = np.where(bits.reshape(inp.shape) >= dropout_threshold(rate), scale,
                         np.float32(0))
    out = _out(out, inp.shape)
    np.multiply(inp, mask, out=out)
    return out, mask


def dropout_backward(dinp, dout, mask):
    """dinp = dout * mask."""
    dinp = _out(dinp, dout.shape)
    np.multiply(dout, mask, out=dinp)
    return dinp


# ---- translate (RandomTranslation) ------------------------------------------------------------

def translate_shifts(key, n, shift_h0, shift_h1, shift_w0, shift_w1):
    """(dy, dx): int64 (n,) shifts down and right of the n images of a batch."""
    bits = mix64(np.uint64(key) + np.arange(n, dtype=np.uint64))
    dy = shift_h0 + ((bits >> np.uint64(32)) % np.uint64(shift_h1 - shift_h0 + 1)).astype(
        np.int64)
    dx = shift_w0 + ((bits & np.uint64(0xFFFFFFFF)) % np.uint64(shift_w1 - shift_w0 + 1)).astype(
        np.int64)
    return dy, dx


def _shifted(src, dy, dx, fill):
    """src (B, H, W, C) with image b moved down dy[b] and right dx[b], fill around."""
    out = np.full(src.shape, fill, dtype=src.dtype)
    h, w = src.shape[1:3]
    for b in range(src.shape[0]):
        y, x = int(dy[b]), int(dx[b])
        if abs(y) < h and abs(x) < w:
            out[b, max(y, 0): h + min(y, 0), max(x, 0): w + min(x, 0)] = (
                src[b, max(-y, 0): h - max(y, 0), max(-x, 0): w - max(x, 0)])
    return out


def translate_forward(out, inp, dy, dx, fill=0.0):
    """out[b, h, w] = inp[b, h - dy[b], w - dx[b]], fill where that is outside the image.
    out, inp (B, H, W, C)"""
    out = _out(out, inp.shape)
    out[...] = _shifted(inp, dy, dx, np.float32(fill))
    return out


def translate_backward(dinp, dout, dy, dx):
    """The adjoint: dinp[b, h, w] = dout[b, h + dy[b], w + dx[b]], 0 outside."""
    dinp = _out(dinp, dout.shape)
    dinp[...] = _shifted(dout, -np.asarray(dy), -np.asarray(dx), np.float32(0))
    return dinp


# ---- batchnorm -----------------------------------------------------------------------------------

def batchnorm_forward(out, xhat, mean, var, invstd, inp, gamma, beta, epsilon):
    """Training: normalise each channel (the last axis) by the statistics of all of inp.
    out, xhat like inp (..., C); mean, var, invstd (C,) are outputs too. Returns (out, xhat,
    mean, var, invstd)."""
    c = inp.shape[-1]
    x = inp.reshape(-1, c)
    m = np.float32(np.sum(x, axis=0, dtype=np.float64) / x.shape[0])
    d = x - m
    v64 = np.sum(d.astype(np.float64) ** 2, axis=0) / x.shape[0]
    inv = np.float32(1.0 / np.sqrt(v64 + float(epsilon)))
    xhat = _out(xhat, inp.shape)
    xhat.reshape(-1, c)[...] = d * inv
    out = _out(out, inp.shape)
    out.reshape(-1, c)[...] = gamma * xhat.reshape(-1, c) + beta
    mean, var, invstd = _out(mean, (c,)), _out(var, (c,)), _out(invstd, (c,))
    mean[...], var[...], invstd[...] = m, v64, inv
    return out, xhat, mean, var, invstd


def batchnorm_inference(out, inp, gamma, beta, moving_mean, moving_variance, epsilon):
    """Predict: out = gamma * ((inp - moving_mean) * invstd) + beta, invstd from the moving
    variance."""
    invstd = np.float32(1.0 / np.sqrt(moving_variance.astype(np.float64) + float(epsilon)))
    out = _out(out, inp.shape)
    out[...] = gamma * ((inp - moving_mean) * invstd) + beta
    return out


def batchnorm_backward(dinp, dgamma, dbeta, dout, xhat, gamma, invstd):
    """dbeta = sum(dout), dgamma = sum(dout * xhat) per channel, dinp = (gamma * invstd / M)
    * ((M * dout - dbeta) - xhat * dgamma), invstd from batchnorm_forward. Returns (dinp,
    dgamma, dbeta)."""
    c = dout.shape[-1]
    g, xh = dout.reshape(-1, c), xhat.reshape(-1, c)
    n = g.shape[0]
    sdy = np.sum(g, axis=0, dtype=np.float64)
    sdx = np.sum(g.astype(np.float64) * xh.astype(np.float64), axis=0)
    dgamma, dbeta = _out(dgamma, (c,)), _out(dbeta, (c,))
    dgamma[...], dbeta[...] = sdx, sdy
    k = (gamma.astype(np.float64) * invstd.astype(np.float64) / n).astype(np.float32)
    dinp = _out(dinp, dout.shape)
    dinp.reshape(-1, c)[...] = k * ((np.float32(n) * g - dbeta) - xh * dgamma)
    return dinp, dgamma, dbeta


# ---- rescaling ---------------------------------------------------------------------------

def rescaling_forward(out, inp, scale, offset=0.0):
    """out = inp * scale + offset in float64 (the product rounded, then the sum), rounded
    once to float32: uint8 pixels p through scale 1/255 give exactly float32(p) / 255. inp
    may be uint8. Returns out."""
    out = _out(out, inp.shape)
    out[...] = np.asarray(inp, dtype=np.float64) * float(scale) + float(offset)
    return out


def rescaling_backward(dinp, dout, scale):
    """dinp = dout * scale in float64, rounded once to float32. Returns dinp."""
    dinp = _out(dinp, dout.shape)
    dinp[...] = dout.astype(np.float64) * float(scale)
    return dinp


def moving_average_update(moving, batch, momentum):
    """moving = moving * momentum + batch * (1 - momentum), in place (float32)."""
    mom = np.float32(momentum)
    moving[...] = moving * mom + batch * (np.float32(1) - mom)
    return moving


# ---- optimizers ----------------------------------------------------------------------------

def _keep_finite(params, new) -> bool:
    """params = new where new is finite; True if it was finite everywhere."""
    finite = np.isfinite(new)
    np.copyto(params, new, where=finite)
    return bool(finite.all())


def _sgd(params, grads, learning_rate) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        new = params - np.float32(learning_rate) * grads
    return _keep_finite(params, new)


def _momentum(params, grads, velocity, learning_rate, momentum, nesterov) -> bool:
    lr, mu = np.float32(learning_rate), np.float32(momentum)
    with np.errstate(over="ignore", invalid="ignore"):
        velocity[...] = mu * velocity - lr * grads
        new = params + (mu * velocity - lr * grads if nesterov else velocity)
    return _keep_finite(params, new)


def adam_alpha(learning_rate, beta_1, beta_2, step) -> np.float32:
    """Adam's step size at step `step` (from 1): lr * sqrt(1 - beta_2^t) / (1 - beta_1^t),
    from the float32 learning rate the kernels take, in float64, rounded once to float32."""
    lr = float(np.float32(learning_rate))
    return np.float32(lr * np.sqrt(1.0 - float(beta_2) ** step) / (1.0 - float(beta_1) ** step))


def _adam(params, grads, m, v, learning_rate, beta_1, beta_2, epsilon, step,
          weight_decay=None) -> bool:
    """Adam's step; with weight_decay (AdamW), from the weights decayed first. One update of
    each weight: where its result is NaN or Inf, it keeps its old value, decay included."""
    alpha = adam_alpha(learning_rate, beta_1, beta_2, step)
    one = np.float32(1)
    with np.errstate(over="ignore", invalid="ignore"):
        m += (grads - m) * (one - np.float32(beta_1))
        v += (grads * grads - v) * (one - np.float32(beta_2))
        start = params if weight_decay is None else _decayed(params, learning_rate,
                                                             weight_decay)
        new = start - (m * alpha) / (np.sqrt(v) + np.float32(epsilon))
    return _keep_finite(params, new)


def sgd_update(params, grads, learning_rate):
    """params -= learning_rate * grads, in place; an element whose new value would be NaN or
    Inf keeps its old value (train_step then reports the step as non-finite)."""
    _sgd(params, grads, learning_rate)
    return params


def momentum_update(params, grads, velocity, learning_rate, momentum, nesterov=False):
    """Keras' SGD with momentum, in place: velocity = momentum * velocity - lr * grads, then
    params += velocity (Nesterov: params += momentum * velocity - lr * grads)."""
    _momentum(params, grads, velocity, learning_rate, momentum, nesterov)
    return params


def adam_update(params, grads, m, v, learning_rate, beta_1, beta_2, epsilon, step):
    """Keras' Adam, in place, at step `step` (the first is 1): see the module docstring."""
    _adam(params, grads, m, v, learning_rate, beta_1, beta_2, epsilon, step)
    return params


def _decayed(params, learning_rate, weight_decay):
    """AdamW's decoupled weight decay: params - (params * weight_decay) * learning_rate."""
    return params - (params * np.float32(weight_decay)) * np.float32(learning_rate)


def adamw_update(params, grads, m, v, learning_rate, beta_1, beta_2, epsilon, step,
                 weight_decay):
    """Keras' AdamW, in place: the decoupled weight decay, then Adam's step, as one step (a
    weight whose result would be NaN or Inf keeps its old value, decay included)."""
    _adam(params, grads, m, v, learning_rate, beta_1, beta_2, epsilon, step, weight_decay)
    return params


def _rmsprop(params, grads, velocity, average, momentum_buf, learning_rate, rho, momentum,
             epsilon) -> bool:
    one, r = np.float32(1), np.float32(rho)
    with np.errstate(over="ignore", invalid="ignore"):
        velocity[...] = r * velocity + (one - r) * (grads * grads)
        if average is not None:
            average[...] = r * average + (one - r) * grads
            denominator = velocity - average * average + np.float32(epsilon)
        else:
            denominator = velocity + np.float32(epsilon)
        step = (np.float32(learning_rate) * grads) / np.sqrt(denominator)
        if momentum_buf is not None:
            momentum_buf[...] = np.float32(momentum) * momentum_buf + step
            step = momentum_buf
        new = params - step
    return _keep_finite(params, new)


def rmsprop_update(params, grads, velocity, average, momentum_buf, learning_rate, rho,
                   momentum, epsilon):
    """Keras' RMSprop, in place; average (centered) and momentum_buf (momentum > 0) may be
    None: see the module docstring."""
    _rmsprop(params, grads, velocity, average, momentum_buf, learning_rate, rho, momentum,
             epsilon)
    return params


def apply_update(optimizer, params, grads, state, learning_rate, step, start=0,
                 stop=None) -> bool:
    """One optimizer step on params[start:stop] (default: all) from the same elements of
    grads and of each slot of state; optimizer is the kernel settings (a
    mnistnet.codes.OPTIMIZER_DTYPE record); state holds its slots, each with the layout of
    params (RMSprop: the average of squares, then the momentum if any, then the centered
    average; with use_ema, then the moving average of the weights, block ema_slot). Returns
    whether every new weight is finite."""
    finite = _optimizer_step(optimizer, params, grads, state, learning_rate, step, start, stop)
    if optimizer["use_ema"]:
        n = params.shape[0]
        stop = n if stop is None else stop
        at = int(optimizer["ema_slot"]) * n
        every = int(optimizer["ema_overwrite_frequency"])
        ema_update(params[start:stop], state[at + start: at + stop],
                   0.0 if step == 1 else float(optimizer["ema_momentum"]),
                   every > 0 and step % every == 0)
    return finite


def ema_update(weights, average, momentum, overwrite) -> None:
    """Keras 3's use_ema after step t: average = momentum * average + (1 - momentum) *
    weights in float32, momentum 0 at t = 1 (the average starts as the weights); overwrite
    (every ema_overwrite_frequency steps): the weights take the average. In place."""
    m = np.float32(momentum)
    average[...] = m * average + (np.float32(1) - m) * weights
    if overwrite:
        weights[...] = average


def _optimizer_step(optimizer, params, grads, state, learning_rate, step, start, stop) -> bool:
    """apply_update's optimizer step alone."""
    code, momentum, nesterov, rho, centered, decay = (
        int(optimizer["code"]), float(optimizer["momentum"]), bool(optimizer["nesterov"]),
        float(optimizer["rho"]), bool(optimizer["centered"]),
        float(optimizer["weight_decay"]))
    beta_1, beta_2, epsilon = (float(optimizer[f]) for f in ("beta_1", "beta_2", "epsilon"))
    n = params.shape[0]
    stop = n if stop is None else stop
    slot = [state[i * n + start: i * n + stop] for i in range(optimizer_slots(optimizer))]
    params, grads = params[start:stop], grads[start:stop]
    if code == OPTIMIZERS["sgd"]:
        return _sgd(params, grads, learning_rate)
    if code == OPTIMIZERS["momentum"]:
        return _momentum(params, grads, slot[0], learning_rate, momentum, nesterov)
    if code == OPTIMIZERS["rmsprop"]:
        moment = slot[1] if momentum > 0 else None
        average = slot[-1] if centered else None
        return _rmsprop(params, grads, slot[0], average, moment, learning_rate, rho, momentum,
                        epsilon)
    return _adam(params, grads, slot[0], slot[1], learning_rate, beta_1, beta_2, epsilon, step,
                 decay if code == OPTIMIZERS["adamw"] else None)


# ---- the network ---------------------------------------------------------------------------

_FORWARD = {ACTIVATIONS["linear"]: linear_forward, ACTIVATIONS["sigmoid"]: sigmoid_forward,
            ACTIVATIONS["relu"]: relu_forward, ACTIVATIONS["softmax"]: softmax_forward,
            ACTIVATIONS["tanh"]: tanh_forward}
_BACKWARD = {ACTIVATIONS["linear"]: linear_backward, ACTIVATIONS["sigmoid"]: sigmoid_backward,
             ACTIVATIONS["relu"]: relu_backward, ACTIVATIONS["softmax"]: softmax_backward,
             ACTIVATIONS["tanh"]: tanh_backward}


def _activation_forward(code, z):
    """In place, over the last axis (softmax: per pixel over the channels)."""
    flat = z.reshape(-1, z.shape[-1])
    _FORWARD[int(code)](flat, flat)
    return z


def _activation_backward(code, dz, out):
    flat = dz.reshape(-1, dz.shape[-1])
    _BACKWARD[int(code)](flat, out.reshape(flat.shape), flat)
    return dz


def _forward_all(plan, params, x, training, keys=None):
    """Every layer's output for the rows of x (the input first), and what each layer keeps
    for its backward pass (its kind's twin says what: patches, argmax, dropout mask,
    translation shifts, BatchNormalization's (xhat, mean, var, invstd); None otherwise). In
    training, keys[i] is the random key of layer i (Dropout, RandomTranslation). x may hold
    uint8 pixels when the first layer is Rescaling: they become floats exactly, and that
    layer's float64 arithmetic then gives what the compiled gather's table holds."""
    n = x.shape[0]
    if x.dtype == np.uint8:
        if not plan.takes_pixels:
            raise TypeError("x holds uint8 pixels but the model's first layer is not "
                            "Rescaling: add mn.Rescaling(1/255) as its first layer, or divide "
                            "by 255 (x.astype(np.float32) / 255)")
        x = x.astype(np.float32)
    outs, kept = [x.reshape((n,) + plan.shapes[0])], []
    for i, kind in enumerate(plan.kinds):
        key = keys[i] if keys is not None else None
        z, keep = kind.forward(plan, params, i, outs[-1], training, key)
        outs.append(_activation_forward(plan.table[i]["act"], z))
        kept.append(keep)
    return outs, kept


def _backward_all(plan, params, grads, outs, kept, loss, target):
    """Gradients of the batch-mean loss into grads, from what _forward_all returned (the
    L2 terms of regularised kernels included)."""
    table, probs = plan.table, outs[-1]
    if loss == LOSSES["categorical_crossentropy"] and table[-1]["act"] == ACTIVATIONS["softmax"]:
        dz = crossentropy_softmax_backward(None, probs, target)
    else:
        dz = _activation_backward(table[-1]["act"], mse_backward(None, probs, target), probs)
    for i in range(len(table) - 1, -1, -1):
        row, inp = table[i], outs[i]
        dinp = plan.kinds[i].backward(plan, params, grads, i, dz, inp, kept[i])
        if row["l2"] > 0:  # d(l2 * sum(w^2)) / dw
            gw, _ = plan.layer_weights(grads, i)
            gw += np.float32(2 * row["l2"]) * plan.layer_weights(params, i)[0]
        if row["dact_in"] < 0:  # no layer before this one has weights
            return
        dz = _activation_backward(table[i - 1]["act"], dinp, inp)


def l2_penalty(plan, params) -> float:
    """sum over the regularised kernels of l2 * sum(w^2) (float64, kernel after kernel)."""
    total = 0.0
    for i, row in enumerate(plan.table):
        if row["l2"] > 0:
            w = plan.layer_weights(params, i)[0].astype(np.float64)
            total += float(row["l2"]) * float(np.sum(w * w))
    return total


def _loss(loss, pred, target):
    if loss == LOSSES["categorical_crossentropy"]:
        return crossentropy_forward(pred, target)
    return mse_forward(pred, target)


def random_keys(plan, key, step):
    """Each Dropout and RandomTranslation layer's key for step `step` of the epoch key =
    (seed, epoch, first step): the layer's index is part of it, so no two layers share
    their random numbers."""
    seed, epoch, first = key
    return [dropout_key(seed, epoch, first + step, i) if kind.keyed else None
            for i, kind in enumerate(plan.kinds)]


def _update(plan, params, grads, state, kept, optimizer, learning_rate, step) -> bool:
    """The optimizer on every layer's trainable weights, then each kind's own update
    (BatchNormalization's moving averages from the step's batch statistics)."""
    finite = True
    for i, (row, kind) in enumerate(zip(plan.table, plan.kinds, strict=True)):
        if row["param"] >= 0:
            off = int(row["param"])
            finite &= apply_update(optimizer, params, grads, state, learning_rate, step, off,
                                   off + int(row["n_train"]))
        if kind.update is not None:
            kind.update(plan, params, i, kept[i])
    return finite


def _step(plan, params, grads, state, loss, xb, yb, optimizer, learning_rate, step, keys):
    """Forward, loss, backward and update on one batch: (loss, outputs, updated finite)."""
    outs, kept = _forward_all(plan, params, xb, True, keys)
    value = _loss(loss, outs[-1], yb) + l2_penalty(plan, params)
    if not np.isfinite(value):
        return value, outs[-1], False
    _backward_all(plan, params, grads, outs, kept, loss, yb)
    finite = _update(plan, params, grads, state, kept, optimizer, learning_rate, step)
    return value, outs[-1], finite


def train_step(plan, params, grads, state, acts, dacts, loss, x, y, optimizer, learning_rate,
               iterations, key):
    """One optimizer step on the batch (x, y) (optimizer step number iterations + 1, with
    dropout keyed by key = (seed, epoch, step)); returns the batch-mean loss, Inf if the
    update would have made some weight NaN or Inf (those keep their values), and updates
    nothing if the loss itself is NaN or Inf. acts and dacts are accepted for the compiled
    twin's signature; NumPy allocates its own."""
    keys = random_keys(plan, key, 0)
    value, _, finite = _step(plan, params, grads, state, loss, x, y, optimizer,
                             learning_rate, iterations + 1, keys)
    return value if finite or not np.isfinite(value) else np.inf


def train_epoch(plan, params, grads, state, acts, dacts, loss, x, y, perm, batch_size,
                optimizer, learning_rates, iterations, key):
    """Minibatch training over x[perm] in order, batch_size rows at a time; batch b uses
    learning_rates[b], is optimizer step iterations + b + 1, and its dropout masks are keyed
    by (seed, epoch, first step + b) for key = (seed, epoch, first step).

    Returns (loss_sum, correct, seen, batches, status): loss_sum is the sum over completed
    batches of batch-mean loss x rows (so loss_sum / seen is Keras' running average),
    correct counts rows whose pre-update prediction had the target's argmax, and status is
    EPOCH_DONE, or EPOCH_NONFINITE_LOSS when batch number `batches` had a NaN/Inf loss or
    update (its update not applied), or EPOCH_NONFINITE_INPUT when that batch's rows of x
    held NaN/Inf (checked as the batch is read, before anything is computed from it). x may
    hold uint8 pixels when the first layer is Rescaling."""
    loss_sum, correct, seen, batches = 0.0, 0, 0, 0
    for start in range(0, len(perm), batch_size):
        rows = perm[start: start + batch_size]
        xb, yb = x[rows], y[rows]
        if xb.dtype.kind == "f" and not all_finite(xb):  # uint8 pixels are always finite
            return loss_sum, correct, seen, batches, EPOCH_NONFINITE_INPUT
        value, probs, finite = _step(plan, params, grads, state, loss, xb, yb, optimizer,
                                     learning_rates[batches], iterations + batches + 1,
                                     random_keys(plan, key, batches))
        if not (np.isfinite(value) and finite):
            return loss_sum, correct, seen, batches, EPOCH_NONFINITE_LOSS
        loss_sum += value * len(rows)
        correct += count_correct(probs, yb)
        seen += len(rows)
        batches += 1
    return loss_sum, correct, seen, batches, EPOCH_DONE


def predict(plan, params, acts, x, out, chunk):
    """Forward x (n, inputs) into out (allocated if None), `chunk` rows at a time (dropout
    passes its input through)."""
    out = _out(out, (x.shape[0], plan.n_outputs))
    for start in range(0, x.shape[0], chunk):
        outs, _ = _forward_all(plan, params, x[start: start + chunk], False)
        out[start: start + chunk] = outs[-1]
    return out
