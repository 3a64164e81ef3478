# cython: language_level=3
"""The compiled backend, seen from Python: one `def` per kernel of mnistnet._kernels.

Names and argument order are those of mnistnet.reference, the NumPy twin: outputs first
(None allocates them), then inputs, then weights. Each wrapper checks dtypes and shapes and
raises ValueError/TypeError naming the argument, then runs the kernel with the GIL released.
Kernels never see arrays that are not C-contiguous float32.
"""
cimport mnistnet._kernels as k
cimport numpy as cnp
from libc.string cimport memcpy, memset
from mnistnet._kernels cimport (
    EpochArgs, EpochResult, InputRows, LayerPlan, Net, OptimizerSettings, Step, Window,
)

import numpy as np

cnp.import_array()

from mnistnet import _kernels, codes
from mnistnet._kernels import (  # noqa: F401  (re-exported: runtime configuration)
    SIMD_PATHS, available_cores, compiled_kinds, get_num_threads, openmp_enabled, select_simd,
    set_num_threads, sgemm, simd_path, simd_supported,
)
from mnistnet.codes import (  # noqa: F401  (the codes both backends expose)
    ACTIVATIONS, LOSSES, OPTIMIZER_DTYPE, OPTIMIZERS, PLAN_DTYPE, conv2d_grad_scratch_floats,
    conv2d_padded_shape,
    dropout_threshold,
    optimizer_slots, window_geometry,
)

EPOCH_DONE = k.EPOCH_DONE
EPOCH_NONFINITE_LOSS = k.EPOCH_NONFINITE_LOSS
EPOCH_INTERRUPTED = k.EPOCH_INTERRUPTED
EPOCH_NONFINITE_INPUT = k.EPOCH_NONFINITE_INPUT


def _check_build():
    """The compiled codes and structs against mnistnet.codes: an ImportError on a build
    that does not match the Python side (a stale extension)."""

    compiled = {"ACTIVATIONS": _kernels.ACTIVATIONS, "LOSSES": _kernels.LOSSES,
                "OPTIMIZERS": _kernels.OPTIMIZERS,
                "EPOCH statuses": (EPOCH_DONE, EPOCH_NONFINITE_LOSS, EPOCH_INTERRUPTED,
                                   EPOCH_NONFINITE_INPUT)}
    expected = {"ACTIVATIONS": codes.ACTIVATIONS, "LOSSES": codes.LOSSES,
                "OPTIMIZERS": codes.OPTIMIZERS,
                "EPOCH statuses": (codes.EPOCH_DONE, codes.EPOCH_NONFINITE_LOSS,
                                   codes.EPOCH_INTERRUPTED, codes.EPOCH_NONFINITE_INPUT)}
    for what in compiled:
        if compiled[what] != expected[what]:
            raise ImportError(f"mnistnet: the compiled kernels' {what} differ from "
                              "mnistnet.codes (a build mismatch: rebuild the extension)")
    for what, dtype, (names, offsets, size) in (
            ("LayerPlan", PLAN_DTYPE, _kernels.plan_layout()),
            ("OptimizerSettings", OPTIMIZER_DTYPE, _kernels.optimizer_layout())):
        if (list(names) != list(dtype.names) or dtype.itemsize != size
                or [dtype.fields[n][1] for n in names] != list(offsets)):
            raise ImportError(f"mnistnet: the compiled {what} struct does not match "
                              "mnistnet.codes (a build mismatch: rebuild the extension)")


_check_build()

# ---- argument checks -----------------------------------------------------------------------

cdef object _check(object a, str name, int ndim=-1):
    """a, if it is a non-empty C-contiguous float32 ndarray with `ndim` dims. (Through
    NumPy's C API: attribute lookups here cost more than a small kernel.)"""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if ndim >= 0 and cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous")
    if cnp.PyArray_SIZE(arr) == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return a


cdef object _out(object out, str name, tuple shape):
    """out itself if it is a writeable float32 array of `shape`; a new one if None."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    _check(out, name)
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
        raise ValueError(f"{name} is read-only")
    return out


cdef void _same(object a, str an, object b, str bn) except *:
    if a.shape != b.shape:
        raise ValueError(f"{an} has shape {a.shape} but {bn} has shape {b.shape}")


cdef inline cnp.ndarray _float32_c(object a):
    # The pointer accessors below only ever see arrays _check has passed; this keeps a
    # missed check from becoming a wild pointer.
    if not (cnp.PyArray_Check(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)):
        raise TypeError("internal: expected a C-contiguous float32 array")
    return <cnp.ndarray>a


cdef const float* _in(object a) except NULL:
    return <const float*>cnp.PyArray_DATA(_float32_c(a))


cdef float* _io(object a) except NULL:
    cdef cnp.ndarray arr = _float32_c(a)
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError("internal: expected a writeable array")
    return <float*>cnp.PyArray_DATA(arr)

# ---- dense ---------------------------------------------------------------------------------

def dense_forward(out, inp, weight, bias):
    """out = inp @ weight + bias.   out (B, OC), inp (B, C), weight (C, OC), bias (OC,)"""
    _check(inp, "inp", 2); _check(weight, "weight", 2); _check(bias, "bias", 1)
    if weight.shape[0] != inp.shape[1]:
        raise ValueError(f"inp has shape {inp.shape} but weight has shape {weight.shape}")
    if bias.shape[0] != weight.shape[1]:
        raise ValueError(f"weight has shape {weight.shape} but bias has shape {bias.shape}")
    cdef Py_ssize_t B = inp.shape[0], C = inp.shape[1], OC = weight.shape[1]
    out = _out(out, "out", (B, OC))
    cdef float* po = _io(out)
    cdef const float* pi = _in(inp)
    cdef const float* pw = _in(weight)
    cdef const float* pb = _in(bias)
    with nogil:
        k.dense_forward(po, pi, pw, pb, B, C, OC)
    return out


def dense_backward(dinp, dweight, dbias, dout, inp, weight):
    """dinp = dout @ weight.T, dweight = inp.T @ dout, dbias = dout summed over rows.
    dinp (B, C), dweight (C, OC), dbias (OC,), dout (B, OC), inp (B, C), weight (C, OC).
    Returns (dinp, dweight, dbias)."""
    _check(dout, "dout", 2); _check(inp, "inp", 2); _check(weight, "weight", 2)
    cdef Py_ssize_t B = inp.shape[0], C = inp.shape[1], OC = weight.shape[1]
    if weight.shape[0] != C:
        raise ValueError(f"inp has shape {inp.shape} but weight has shape {weight.shape}")
    if dout.shape != (B, OC):
        raise ValueError(f"dout has shape {dout.shape}, expected {(B, OC)} from inp "
                         f"{inp.shape} and weight {weight.shape}")
    dinp = _out(dinp, "dinp", (B, C))
    dweight = _out(dweight, "dweight", (C, OC))
    dbias = _out(dbias, "dbias", (OC,))
    cdef float* pdi = _io(dinp)
    cdef float* pdw = _io(dweight)
    cdef float* pdb = _io(dbias)
    cdef const float* pdo = _in(dout)
    cdef const float* pi = _in(inp)
    cdef const float* pw = _in(weight)
    with nogil:
        k.dense_backward(pdi, pdw, pdb, pdo, pi, pw, B, C, OC)
    return dinp, dweight, dbias

# ---- activations ---------------------------------------------------------------------------

def _elementwise_forward(int code, out, inp):
    _check(inp, "inp")
    out = _out(out, "out", inp.shape)
    cdef float* po = _io(out)
    cdef const float* pi = _in(inp)
    cdef Py_ssize_t N = inp.size
    with nogil:
        if code == k.ACT_LINEAR:
            k.linear_forward(po, pi, N)
        elif code == k.ACT_SIGMOID:
            k.sigmoid_forward(po, pi, N)
        elif code == k.ACT_TANH:
            k.tanh_forward(po, pi, N)
        else:
            k.relu_forward(po, pi, N)
    return out


def _elementwise_backward(int code, dinp, out, dout):
    _check(out, "out"); _check(dout, "dout")
    _same(dout, "dout", out, "out")
    dinp = _out(dinp, "dinp", out.shape)
    cdef float* pd = _io(dinp)
    cdef const float* po = _in(out)
    cdef const float* pg = _in(dout)
    cdef Py_ssize_t N = out.size
    with nogil:
        if code == k.ACT_LINEAR:
            k.linear_backward(pd, po, pg, N)
        elif code == k.ACT_SIGMOID:
            k.sigmoid_backward(pd, po, pg, N)
        elif code == k.ACT_TANH:
            k.tanh_backward(pd, po, pg, N)
        else:
            k.relu_backward(pd, po, pg, N)
    return dinp


def linear_forward(out, inp):
    """out = inp (the identity activation)."""
    return _elementwise_forward(k.ACT_LINEAR, out, inp)


def linear_backward(dinp, out, dout):
    """dinp = dout."""
    return _elementwise_backward(k.ACT_LINEAR, dinp, out, dout)


def tanh_forward(out, inp):
    """out = tanh(inp), elementwise."""
    return _elementwise_forward(k.ACT_TANH, out, inp)


def tanh_backward(dinp, out, dout):
    """dinp = dout * (1 - out^2), out the tanh's output."""
    return _elementwise_backward(k.ACT_TANH, dinp, out, dout)


def sigmoid_forward(out, inp):
    """out = 1 / (1 + exp(-inp)), elementwise."""
    return _elementwise_forward(k.ACT_SIGMOID, out, inp)


def sigmoid_backward(dinp, out, dout):
    """dinp = dout * out * (1 - out), from the forward output."""
    return _elementwise_backward(k.ACT_SIGMOID, dinp, out, dout)


def relu_forward(out, inp):
    """out = max(inp, 0), elementwise."""
    return _elementwise_forward(k.ACT_RELU, out, inp)


def relu_backward(dinp, out, dout):
    """dinp = dout where out > 0, else 0."""
    return _elementwise_backward(k.ACT_RELU, dinp, out, dout)


def softmax_forward(out, inp):
    """Row-wise softmax of inp (B, C) into out (B, C)."""
    _check(inp, "inp", 2)
    out = _out(out, "out", inp.shape)
    cdef float* po = _io(out)
    cdef const float* pi = _in(inp)
    cdef Py_ssize_t B = inp.shape[0], C = inp.shape[1]
    with nogil:
        k.softmax_forward(po, pi, B, C)
    return out


def softmax_backward(dinp, out, dout):
    """dinp = out * (dout - sum(dout * out, row)), the softmax Jacobian applied to dout."""
    _check(out, "out", 2); _check(dout, "dout", 2)
    _same(dout, "dout", out, "out")
    dinp = _out(dinp, "dinp", out.shape)
    cdef float* pd = _io(dinp)
    cdef const float* po = _in(out)
    cdef const float* pg = _in(dout)
    cdef Py_ssize_t B = out.shape[0], C = out.shape[1]
    with nogil:
        k.softmax_backward(pd, po, pg, B, C)
    return dinp

# ---- losses, optimizers, metrics ------------------------------------------------------------------

cdef tuple _pair(pred, str pn, target):
    _check(pred, pn, 2); _check(target, "target", 2)
    _same(target, "target", pred, pn)
    return pred.shape


def mse_forward(pred, target) -> float:
    """Keras' MSE: mean over outputs, then over the batch."""
    B, C = _pair(pred, "pred", target)
    return k.mse_forward(_in(pred), _in(target), B, C)


def mse_backward(dpred, pred, target):
    """dpred = 2 (pred - target) / (B C), the gradient of mse_forward."""
    B, C = _pair(pred, "pred", target)
    dpred = _out(dpred, "dpred", pred.shape)
    k.mse_backward(_io(dpred), _in(pred), _in(target), B, C)
    return dpred


def crossentropy_forward(probs, target) -> float:
    """Keras' categorical cross-entropy on probabilities: rows renormalised, clipped to
    [1e-7, 1 - 1e-7], -sum(target * log(p)), mean over the batch."""
    B, C = _pair(probs, "probs", target)
    return k.crossentropy_forward(_in(probs), _in(target), B, C)


def crossentropy_softmax_backward(dlogits, probs, target):
    """dlogits = (probs - target) / B: the gradient w.r.t. the softmax input (fused)."""
    B, C = _pair(probs, "probs", target)
    dlogits = _out(dlogits, "dlogits", probs.shape)
    k.crossentropy_softmax_backward(_io(dlogits), _in(probs), _in(target), B, C)
    return dlogits


def sgd_update(params, grads, float learning_rate):
    """params -= learning_rate * grads, in place. Returns params."""
    _check(params, "params"); _check(grads, "grads")
    _same(grads, "grads", params, "params")
    if not params.flags.writeable:
        raise ValueError("params is read-only")
    cdef float* pp = _io(params)
    cdef const float* pg = _in(grads)
    cdef Py_ssize_t N = params.size
    with nogil:
        k.sgd_update(pp, pg, learning_rate, N)
    return params


def all_finite(a) -> bool:
    """True if no element of the float32 C-contiguous array a is NaN or Inf (True for an
    empty array). Several threads scan a large array."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32 and a.size == 0:
        return True
    _check(a, "a")
    cdef const float* pa = _in(a)
    cdef Py_ssize_t N = a.size
    cdef bint finite
    with nogil:
        finite = k.all_finite(pa, N)
    return finite


def count_correct(pred, target) -> int:
    """Rows where argmax(pred) == argmax(target) (first maximum on ties, as np.argmax)."""
    B, C = _pair(pred, "pred", target)
    return k.count_correct(_in(pred), _in(target), B, C)

def momentum_update(params, grads, velocity, float learning_rate, float momentum,
                    bint nesterov=False):
    """Keras' SGD with momentum, in place: velocity = momentum * velocity - lr * grads, then
    params += velocity (Nesterov: params += momentum * velocity - lr * grads). Returns
    params."""
    _check(params, "params"); _check(grads, "grads"); _check(velocity, "velocity")
    _same(grads, "grads", params, "params"); _same(velocity, "velocity", params, "params")
    cdef float* pp = _io(params)
    cdef const float* pg = _in(grads)
    cdef float* pv = _io(velocity)
    cdef Py_ssize_t N = params.size
    with nogil:
        k.momentum_update(pp, pg, pv, learning_rate, momentum, nesterov, N)
    return params


def _check_adam_arrays(params, grads, m, v, long long step):
    # Adam's and AdamW's arguments: four float32 arrays of one size, and a step from 1.
    _check(params, "params"); _check(grads, "grads"); _check(m, "m"); _check(v, "v")
    _same(grads, "grads", params, "params"); _same(m, "m", params, "params")
    _same(v, "v", params, "params")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")


def adam_update(params, grads, m, v, float learning_rate, double beta_1, double beta_2,
                float epsilon, long long step):
    """Keras' Adam, in place, at step `step` (the first is 1); see mnistnet.reference.
    Returns params."""
    _check_adam_arrays(params, grads, m, v, step)
    cdef float* pp = _io(params)
    cdef const float* pg = _in(grads)
    cdef float* pm = _io(m)
    cdef float* pv = _io(v)
    cdef Py_ssize_t N = params.size
    with nogil:
        k.adam_update(pp, pg, pm, pv, learning_rate, beta_1, beta_2, epsilon, step, N)
    return params


def adamw_update(params, grads, m, v, float learning_rate, double beta_1, double beta_2,
                 float epsilon, long long step, float weight_decay):
    """Keras' AdamW, in place: params -= (params * weight_decay) * learning_rate, then Adam's
    step. Returns params."""
    _check_adam_arrays(params, grads, m, v, step)
    cdef float* pp = _io(params)
    cdef const float* pg = _in(grads)
    cdef float* pm = _io(m)
    cdef float* pv = _io(v)
    cdef Py_ssize_t N = params.size
    with nogil:
        k.adamw_update(pp, pg, pm, pv, learning_rate, beta_1, beta_2, epsilon, step,
                       weight_decay, N)
    return params


def rmsprop_update(params, grads, velocity, average, momentum_buf, float learning_rate,
                   float rho, float momentum, float epsilon):
    """Keras' RMSprop, in place; average (centered) and momentum_buf (momentum > 0) may be
    None. Returns params."""
    _check(params, "params"); _check(grads, "grads"); _check(velocity, "velocity")
    _same(grads, "grads", params, "params"); _same(velocity, "velocity", params, "params")
    cdef float* pa = NULL
    cdef float* pm = NULL
    if average is not None:
        _check(average, "average"); _same(average, "average", params, "params")
        pa = _io(average)
    if momentum_buf is not None:
        _check(momentum_buf, "momentum_buf"); _same(momentum_buf, "momentum_buf", params,
                                                    "params")
        pm = _io(momentum_buf)
    cdef float* pp = _io(params)
    cdef const float* pg = _in(grads)
    cdef float* pv = _io(velocity)
    cdef Py_ssize_t N = params.size
    with nogil:
        k.rmsprop_update(pp, pg, pv, pa, pm, learning_rate, rho, momentum, epsilon, N)
    return params

# ---- conv2d, maxpool2d, dropout ------------------------------------------------------------

cdef tuple _two(object value, str name):
    value = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(value) != 2 or any(not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"{name} must be an int >= 1 or a pair of them, got {value!r}")
    return value


cdef Window _window(tuple image, tuple window, tuple strides, str padding) except *:
    """The geometry of windows of `window` sliding by `strides` over (H, W, C) images."""
    cdef Window g
    g.H, g.W, g.C = image
    g.KH, g.KW = window
    g.SH, g.SW = strides
    g.OH, g.PT = window_geometry(g.H, g.KH, g.SH, padding)
    g.OW, g.PL = window_geometry(g.W, g.KW, g.SW, padding)
    return g


cdef object _check_int32(object a, str name, tuple shape):
    if not isinstance(a, np.ndarray) or a.dtype != np.int32 or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous int32 array")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return a


def conv2d_forward(out, padded, inp, weight, bias, strides=(1, 1), padding="valid",
                   bint relu=False):
    """out = im2col(inp) @ weight + bias, channels last, computed without the patches, then
    relu_forward's max(out, 0) if relu; padded (None allocates) receives inp as the windows
    read it, for the backward pass (reference.conv2d_padded_shape). out (B, OH, OW, OC),
    padded (B, Hs, Ws, C), inp (B, H, W, C), weight (KH, KW, C, OC), bias (OC,). Returns
    out."""
    _check(inp, "inp", 4); _check(weight, "weight", 4); _check(bias, "bias", 1)
    if weight.shape[2] != inp.shape[3]:
        raise ValueError(f"inp has shape {inp.shape} but weight has shape {weight.shape}")
    if bias.shape[0] != weight.shape[3]:
        raise ValueError(f"weight has shape {weight.shape} but bias has shape {bias.shape}")
    cdef Window g = _window(inp.shape[1:], weight.shape[:2], _two(strides, "strides"), padding)
    cdef Py_ssize_t B = inp.shape[0], OC = weight.shape[3]
    out = _out(out, "out", (B, g.OH, g.OW, OC))
    padded = _out(padded, "padded", (B, *conv2d_padded_shape(inp.shape[1:], weight.shape[:2],
                                                             (g.SH, g.SW), padding)))
    cdef float* po = _io(out)
    cdef float* pp = _io(padded)
    cdef const float* pi = _in(inp)
    cdef const float* pw = _in(weight)
    cdef const float* pb = _in(bias)
    cdef bint pads = k.conv2d_pads(&g)
    with nogil:
        k.conv2d_forward(po, pp, pi, pw, pb, &g, B, OC, relu)
    if not pads:  # the windows read inp itself: that is what padded holds
        padded[...] = inp
    return out


def conv2d_backward(dinp, dweight, dbias, dout, padded, inp, weight, strides=(1, 1),
                    padding="valid"):
    """dweight = patches^T @ dout (the patches read from padded, conv2d_forward's), dbias =
    dout summed over images and pixels, dinp = col2im(dout @ weight^T): shapes as
    conv2d_forward's (dinp as inp, dweight as weight). Returns (dinp, dweight, dbias)."""
    _check(dout, "dout", 4); _check(padded, "padded", 4); _check(inp, "inp", 4)
    _check(weight, "weight", 4)
    if weight.shape[2] != inp.shape[3]:
        raise ValueError(f"inp has shape {inp.shape} but weight has shape {weight.shape}")
    cdef Window g = _window(inp.shape[1:], weight.shape[:2], _two(strides, "strides"), padding)
    cdef Py_ssize_t B = inp.shape[0], OC = weight.shape[3], K = g.KH * g.KW * g.C
    if dout.shape != (B, g.OH, g.OW, OC):
        raise ValueError(f"dout has shape {dout.shape}, expected {(B, g.OH, g.OW, OC)}")
    want = (B, *conv2d_padded_shape(inp.shape[1:], weight.shape[:2], (g.SH, g.SW), padding))
    if padded.shape != want:
        raise ValueError(f"padded has shape {padded.shape}, expected {want}")
    dinp = _out(dinp, "dinp", inp.shape)
    dweight = _out(dweight, "dweight", weight.shape)
    dbias = _out(dbias, "dbias", (OC,))
    scratch = np.empty(OC * K + conv2d_grad_scratch_floats(
        (g.OH, g.OW), (g.KH, g.KW), (g.SH, g.SW), g.C, OC), dtype=np.float32)
    cdef float* pdi = _io(dinp)
    cdef float* pdw = _io(dweight)
    cdef float* pdb = _io(dbias)
    cdef float* ps = _io(scratch)
    cdef const float* pdo = _in(dout)
    cdef const float* pp = _in(padded)
    cdef const float* pw = _in(weight)
    with nogil:
        k.conv2d_backward(pdi, pdw, pdb, ps, pdo, pp, pw, &g, B, OC)
    return dinp, dweight, dbias


def maxpool2d_forward(out, argmax, inp, pool_size=(2, 2), strides=None, padding="valid"):
    """out = the max of each window; argmax (int32; None allocates) = its index
    (h * W + w) * C + c in the image, the first maximum in row-major window order.
    out and argmax (B, OH, OW, C), inp (B, H, W, C). Returns (out, argmax)."""
    _check(inp, "inp", 4)
    pool = _two(pool_size, "pool_size")
    cdef Window g = _window(inp.shape[1:], pool, pool if strides is None else
                            _two(strides, "strides"), padding)
    cdef Py_ssize_t B = inp.shape[0]
    shape = (B, g.OH, g.OW, g.C)
    out = _out(out, "out", shape)
    argmax = np.empty(shape, dtype=np.int32) if argmax is None else _check_int32(
        argmax, "argmax", shape)
    cdef float* po = _io(out)
    cdef int* pa = <int*>cnp.PyArray_DATA(<cnp.ndarray>argmax)
    cdef const float* pi = _in(inp)
    with nogil:
        k.maxpool2d_forward(po, pa, pi, &g, B)
    return out, argmax


def maxpool2d_backward(dinp, dout, argmax, input_shape, pool_size=None, strides=None,
                       padding="valid", relu_input=None):
    """dinp = dout added at each window's argmax, zero elsewhere. dinp (B, H, W, C) =
    input_shape, dout and argmax (B, OH, OW, C) from maxpool2d_forward. With the forward's
    window (pool_size, strides, padding) given, each argmax must lie in its own window, and
    windows that tile the image write each input once (the network's path); the result is
    the same. relu_input (input_shape): the pool's input when it is a relu's output, whose
    backward is applied in the same pass (relu_backward(dinp, relu_input, dinp) after, bit
    for bit). Returns dinp."""
    _check(dout, "dout", 4)
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or input_shape[0] != dout.shape[0] or (
            input_shape[3] != dout.shape[3]):
        raise ValueError(f"input_shape {input_shape} does not fit dout {dout.shape}")
    _check_int32(argmax, "argmax", dout.shape)
    cdef Py_ssize_t n_img = input_shape[1] * input_shape[2] * input_shape[3]
    if argmax.size and (argmax.min() < 0 or argmax.max() >= n_img):
        raise ValueError(f"argmax must index the {n_img} elements of an image")
    cdef Window g
    memset(&g, 0, sizeof(Window))  # no window: the kernel's general scatter
    g.H, g.W, g.C = input_shape[1:]
    g.OH, g.OW = dout.shape[1:3]
    if pool_size is not None:
        pool = _two(pool_size, "pool_size")
        g = _window(input_shape[1:], pool, pool if strides is None else
                    _two(strides, "strides"), padding)
        if (g.OH, g.OW) != dout.shape[1:3]:
            raise ValueError(f"dout has shape {dout.shape}, the windows give "
                             f"{(g.OH, g.OW)} pixels")
        _check_argmax_in_windows(argmax, &g)
    dinp = _out(dinp, "dinp", input_shape)
    cdef const float* pr = NULL
    if relu_input is not None:
        _check(relu_input, "relu_input")
        if relu_input.shape != input_shape:
            raise ValueError(f"relu_input has shape {relu_input.shape}, expected {input_shape}")
        pr = _in(relu_input)
    cdef Py_ssize_t B = dout.shape[0]
    cdef float* pd = _io(dinp)
    cdef const float* pg = _in(dout)
    cdef const int* pa = <const int*>cnp.PyArray_DATA(<cnp.ndarray>argmax)
    with nogil:
        k.maxpool2d_backward(pd, pg, pa, pr, &g, B)
    return dinp


cdef void _check_argmax_in_windows(argmax, const Window* g) except *:
    # Each index (h * W + w) * C + c of output pixel (oh, ow, c) names a cell of its window.
    h, rest = np.divmod(argmax, g.W * g.C)
    w, c = np.divmod(rest, g.C)
    oh = np.arange(g.OH).reshape(1, -1, 1, 1) * g.SH - g.PT
    ow = np.arange(g.OW).reshape(1, 1, -1, 1) * g.SW - g.PL
    inside = ((c == np.arange(g.C)) & (h >= oh) & (h < oh + g.KH)
              & (w >= ow) & (w < ow + g.KW))
    if not inside.all():
        raise ValueError("argmax must index a cell of its own window")


def dropout_key(unsigned long long seed, long long epoch, long long step, long long layer):
    """The counter-based key of one dropout layer's masks in one training step."""
    return k.dropout_key(seed, epoch, step, layer)


def dropout_forward(out, mask, inp, double rate, unsigned long long key):
    """mask = 0 where element e (row-major over the batch) is dropped, else 1 / (1 - rate);
    out = inp * mask. Returns (out, mask)."""
    _check(inp, "inp")
    if not 0 <= rate < 1:
        raise ValueError(f"rate must lie in [0, 1), got {rate}")
    out = _out(out, "out", inp.shape)
    mask = _out(mask, "mask", inp.shape)
    cdef float* po = _io(out)
    cdef float* pm = _io(mask)
    cdef const float* pi = _in(inp)
    cdef Py_ssize_t N = inp.size
    with nogil:
        k.dropout_forward(po, pm, pi, rate, key, 0, N)
    return out, mask


def dropout_backward(dinp, dout, mask):
    """dinp = dout * mask. Returns dinp."""
    _check(dout, "dout"); _check(mask, "mask")
    _same(mask, "mask", dout, "dout")
    dinp = _out(dinp, "dinp", dout.shape)
    cdef float* pd = _io(dinp)
    cdef const float* pg = _in(dout)
    cdef const float* pm = _in(mask)
    cdef Py_ssize_t N = dout.size
    with nogil:
        k.dropout_backward(pd, pg, pm, N)
    return dinp

# ---- translate (RandomTranslation) and batchnorm ------------------------------------------

def translate_shifts(unsigned long long key, Py_ssize_t n, Py_ssize_t shift_h0,
                     Py_ssize_t shift_h1, Py_ssize_t shift_w0, Py_ssize_t shift_w1):
    """(dy, dx): int64 (n,) shifts down and right of the n images of a batch, in
    [shift_h0, shift_h1] and [shift_w0, shift_w1]."""
    if n < 0 or shift_h1 < shift_h0 or shift_w1 < shift_w0:
        raise ValueError(f"need n >= 0 and ordered shift ranges, got n={n}, "
                         f"[{shift_h0}, {shift_h1}], [{shift_w0}, {shift_w1}]")
    dy = np.empty(n, dtype=np.int64)
    dx = np.empty(n, dtype=np.int64)
    cdef long long[::1] vy = dy
    cdef long long[::1] vx = dx
    if n:
        k.translate_shifts(&vy[0], &vx[0], key, 0, n, shift_h0, shift_h1, shift_w0, shift_w1)
    return dy, dx


cdef tuple _shifts(object dy, object dx, Py_ssize_t B):
    dy = np.ascontiguousarray(dy, dtype=np.int64)
    dx = np.ascontiguousarray(dx, dtype=np.int64)
    if dy.shape != (B,) or dx.shape != (B,):
        raise ValueError(f"dy and dx must have shape ({B},), got {dy.shape} and {dx.shape}")
    return dy, dx


def translate_forward(out, inp, dy, dx, float fill=0.0):
    """out[b, h, w] = inp[b, h - dy[b], w - dx[b]], fill where that is outside the image.
    out, inp (B, H, W, C); dy, dx (B,) integers. Returns out."""
    _check(inp, "inp", 4)
    cdef Py_ssize_t B = inp.shape[0], H = inp.shape[1], W = inp.shape[2], C = inp.shape[3]
    dy, dx = _shifts(dy, dx, B)
    out = _out(out, "out", inp.shape)
    cdef const long long[::1] vy = dy
    cdef const long long[::1] vx = dx
    cdef float* po = _io(out)
    cdef const float* pi = _in(inp)
    with nogil:
        k.translate_forward(po, pi, &vy[0], &vx[0], fill, B, H, W, C)
    return out


def translate_backward(dinp, dout, dy, dx):
    """The adjoint of translate_forward: dinp[b, h, w] = dout[b, h + dy[b], w + dx[b]], 0
    outside. Returns dinp."""
    _check(dout, "dout", 4)
    cdef Py_ssize_t B = dout.shape[0], H = dout.shape[1], W = dout.shape[2]
    cdef Py_ssize_t C = dout.shape[3]
    dy, dx = _shifts(dy, dx, B)
    dinp = _out(dinp, "dinp", dout.shape)
    cdef const long long[::1] vy = dy
    cdef const long long[::1] vx = dx
    cdef float* pd = _io(dinp)
    cdef const float* pg = _in(dout)
    with nogil:
        k.translate_backward(pd, pg, &vy[0], &vx[0], B, H, W, C)
    return dinp


cdef tuple _channels(object inp, str name, tuple params):
    """(M, C) of inp (..., C), after checking the per-channel arrays params: (name, array)."""
    _check(inp, name)
    if inp.ndim < 1:
        raise ValueError(f"{name} must have a channel axis")
    cdef Py_ssize_t C = inp.shape[inp.ndim - 1]
    for pname, a in params:
        _check(a, pname, 1)
        if a.shape[0] != C:
            raise ValueError(f"{pname} has shape {a.shape}, expected ({C},) for {name} "
                             f"{inp.shape}")
    return inp.size // C, C


def batchnorm_forward(out, xhat, mean, var, invstd, inp, gamma, beta, double epsilon):
    """Training: each channel (the last axis) normalised by the statistics of all of inp;
    out = gamma * xhat + beta. out, xhat like inp; mean, var (biased) and invstd (C,) are
    outputs too. Returns (out, xhat, mean, var, invstd)."""
    M, C = _channels(inp, "inp", (("gamma", gamma), ("beta", beta)))
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    out = _out(out, "out", inp.shape)
    xhat = _out(xhat, "xhat", inp.shape)
    mean = _out(mean, "mean", (C,))
    var = _out(var, "var", (C,))
    invstd = _out(invstd, "invstd", (C,))
    cdef float* po = _io(out)
    cdef float* ph = _io(xhat)
    cdef float* pm = _io(mean)
    cdef float* pv = _io(var)
    cdef float* ps = _io(invstd)
    cdef const float* pi = _in(inp)
    cdef const float* pgm = _in(gamma)
    cdef const float* pb = _in(beta)
    cdef Py_ssize_t m = M, c = C
    with nogil:
        k.batchnorm_stats(pm, pv, ps, pi, epsilon, 0, c, m, c)
        k.batchnorm_normalize(po, ph, pi, pgm, pb, pm, ps, m, c, False)
    return out, xhat, mean, var, invstd


def batchnorm_inference(out, inp, gamma, beta, moving_mean, moving_variance, double epsilon):
    """Predict: out = gamma * ((inp - moving_mean) * invstd) + beta, invstd =
    1 / sqrt(moving_variance + epsilon). Returns out."""
    M, C = _channels(inp, "inp", (("gamma", gamma), ("beta", beta),
                                  ("moving_mean", moving_mean),
                                  ("moving_variance", moving_variance)))
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    out = _out(out, "out", inp.shape)
    cdef float* po = _io(out)
    cdef const float* pi = _in(inp)
    cdef const float* pgm = _in(gamma)
    cdef const float* pb = _in(beta)
    cdef const float* pmm = _in(moving_mean)
    cdef const float* pmv = _in(moving_variance)
    cdef Py_ssize_t m = M, c = C
    with nogil:
        k.batchnorm_inference(po, pi, pgm, pb, pmm, pmv, epsilon, m, c, False)
    return out


def batchnorm_backward(dinp, dgamma, dbeta, dout, xhat, gamma, invstd):
    """dbeta = sum(dout), dgamma = sum(dout * xhat) per channel, dinp = (gamma * invstd / M)
    * ((M * dout - dbeta) - xhat * dgamma), from batchnorm_forward's xhat and invstd.
    Returns (dinp, dgamma, dbeta)."""
    M, C = _channels(dout, "dout", (("gamma", gamma), ("invstd", invstd)))
    _check(xhat, "xhat")
    _same(xhat, "xhat", dout, "dout")
    dinp = _out(dinp, "dinp", dout.shape)
    dgamma = _out(dgamma, "dgamma", (C,))
    dbeta = _out(dbeta, "dbeta", (C,))
    cdef float* pd = _io(dinp)
    cdef float* pdg = _io(dgamma)
    cdef float* pdb = _io(dbeta)
    cdef const float* pg = _in(dout)
    cdef const float* ph = _in(xhat)
    cdef const float* pgm = _in(gamma)
    cdef const float* ps = _in(invstd)
    # the kernels read xhat as (x - shift) * scale: a stored xhat with shift 0 and scale 1
    zeros, ones = np.zeros(C, np.float32), np.ones(C, np.float32)
    cdef const float* p0 = _in(zeros)
    cdef const float* p1 = _in(ones)
    cdef Py_ssize_t m = M, c = C
    with nogil:
        k.batchnorm_backward_sums(pdg, pdb, pg, ph, p0, p1, 0, c, m, c)
        k.batchnorm_input_grad(pd, pg, ph, p0, p1, pgm, ps, pdg, pdb, m, m, c)
    return dinp, dgamma, dbeta

# ---- rescaling -------------------------------------------------------------------------------

def rescaling_forward(out, inp, double scale, double offset=0.0):
    """out = inp * scale + offset, in double, rounded once to float32 (out may be inp).
    Returns out."""
    _check(inp, "inp")
    out = _out(out, "out", inp.shape)
    cdef float* po = _io(out)
    cdef const float* pi = _in(inp)
    cdef Py_ssize_t N = inp.size
    with nogil:
        k.rescaling_forward(po, pi, scale, offset, N)
    return out


def rescaling_backward(dinp, dout, double scale):
    """dinp = dout * scale, in double, rounded once to float32. Returns dinp."""
    _check(dout, "dout")
    dinp = _out(dinp, "dinp", dout.shape)
    cdef float* pd = _io(dinp)
    cdef const float* pg = _in(dout)
    cdef Py_ssize_t N = dout.size
    with nogil:
        k.rescaling_backward(pd, pg, scale, N)
    return dinp


def pixel_values(plan):
    """The outputs of the plan's first layer, a Rescaling, for the 256 uint8 pixel values
    (float32 (256,)): what the epoch and predict turn each pixel into as they read it."""
    if not plan.takes_pixels:
        raise ValueError("uint8 pixels go into a model whose first layer is Rescaling")
    row = plan.table[0]
    return rescaling_forward(None, np.arange(256, dtype=np.float32), row["scale"],
                             row["offset"])

# ---- the network ---------------------------------------------------------------------------

cdef Net _net(plan, params, grads, state, acts, dacts, int loss, Py_ssize_t rows,
              optimizer) except *:
    """A Net over the caller's buffers and the plan (a mnistnet.plan.Plan), after checking
    that they fit it."""
    table = getattr(plan, "table", None)
    if not isinstance(table, np.ndarray):
        raise TypeError(f"plan must be a mnistnet.plan.Plan, got {type(plan).__name__}")
    if (table.dtype != PLAN_DTYPE or table.dtype.itemsize != sizeof(LayerPlan)
            or not table.flags.c_contiguous or table.shape[0] < 1):
        raise ValueError("internal: the plan's table does not match the kernels' LayerPlan")
    if loss not in LOSSES.values():
        raise ValueError(f"unknown loss code {loss}")
    cdef Py_ssize_t n_p = plan.n_params
    _check(params, "params", 1)
    if params.shape[0] != n_p:
        raise ValueError(f"params holds {params.shape[0]} floats, the plan needs {n_p}")
    _check(acts, "acts", 1)
    if acts.shape[0] < rows * plan.acts_per_row:
        raise ValueError(f"acts holds {acts.shape[0]} floats, {rows} rows need "
                         f"{rows * plan.acts_per_row}")
    cdef Net net
    net.plan = <const LayerPlan*>cnp.PyArray_DATA(<cnp.ndarray>table)
    net.n_layers = table.shape[0]
    net.loss = loss
    net.n_params = n_p
    net.acts_row = plan.acts_per_row
    net.dacts_row = plan.dacts_per_row
    net.targets = plan.targets
    net.n_outputs = plan.n_outputs
    net.thread_ws = 0 if plan.dense_only else plan.thread_workspace_floats()
    net.train_flops = plan.flops_per_sample()[1]
    net.dense_only = plan.dense_only
    net.has_l2 = plan.has_l2
    net.batch_statistics = plan.batch_statistics
    net.shared = 0 if plan.dense_only else plan.shared_floats
    net.params = _io(params)
    net.a = _io(acts)
    net.rows = rows
    net.grads = NULL
    net.state = NULL
    net.d = NULL
    net.team_threads = 1
    net.w0t = NULL
    net.g0t = NULL
    net.profile = NULL
    net.opt.code = k.OPT_SGD
    if grads is None:
        return net
    _check(grads, "grads", 1); _check(dacts, "dacts", 1)
    if grads.shape[0] != n_p or dacts.shape[0] < plan.buffer_sizes(rows)[2]:
        raise ValueError(f"grads/dacts are too small for the plan and {rows} rows")
    net.grads = _io(grads)
    net.d = _io(dacts)
    net.team_threads = plan.team_threads(rows, dacts.shape[0])
    net.opt = _optimizer_settings(optimizer)
    cdef Py_ssize_t n_state = optimizer_slots(optimizer) * n_p
    if n_state:
        _check(state, "state", 1)
        if state.shape[0] != n_state:
            raise ValueError(f"state holds {state.shape[0]} floats, the optimizer needs "
                             f"{n_state}")
        net.state = _io(state)
    return net


cdef OptimizerSettings _optimizer_settings(object optimizer) except *:
    """The optimizer's settings (a mnistnet.codes.OPTIMIZER_DTYPE record, as
    Optimizer.kernel_settings gives them) as the C struct, byte for byte."""
    record = np.asarray(optimizer)
    if record.dtype != OPTIMIZER_DTYPE or record.shape != ():
        raise TypeError("optimizer must be an OPTIMIZER_DTYPE record (see "
                        f"mnistnet.codes.optimizer_settings), got {record.dtype}")
    if int(record["code"]) not in OPTIMIZERS.values():
        raise ValueError(f"unknown optimizer code {int(record['code'])}")
    if record["use_ema"] and (int(record["ema_slot"]) != optimizer_slots(record) - 1
                              or not 0 <= float(record["ema_momentum"]) <= 1
                              or int(record["ema_overwrite_frequency"]) < 0):
        raise ValueError("the optimizer's use_ema settings are inconsistent (ema_slot must "
                         "follow the optimizer's own slots, ema_momentum lie in [0, 1])")
    cdef OptimizerSettings o
    cdef const unsigned char[::1] raw = np.ascontiguousarray(record).view(np.uint8).reshape(-1)
    memcpy(&o, &raw[0], sizeof(OptimizerSettings))
    return o


def apply_update(optimizer, params, grads, state, float learning_rate, long long step,
                 Py_ssize_t start=0, stop=None):
    """One optimizer step on params[start:stop] (default: all) from the same elements of
    grads and of each slot of state, then with use_ema the weights' moving average: the
    compiled update of one block of a training step (optimizer: a
    mnistnet.codes.OPTIMIZER_DTYPE record; step: t, from 1). Returns whether every new
    weight is finite."""
    _check(params, "params", 1); _check(grads, "grads", 1)
    cdef Py_ssize_t n = params.shape[0]
    cdef Py_ssize_t end = n if stop is None else stop
    if grads.shape[0] != n or not 0 <= start <= end <= n:
        raise ValueError(f"grads must match params ({n}) and 0 <= start <= stop <= {n}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    cdef Net net
    memset(&net, 0, sizeof(Net))
    net.opt = _optimizer_settings(optimizer)
    net.n_params = n
    net.params = _io(params)
    net.grads = _io(grads)
    if optimizer_slots(optimizer):
        _check(state, "state", 1)
        if state.shape[0] != optimizer_slots(optimizer) * n:
            raise ValueError(f"state holds {state.shape[0]} floats, the optimizer needs "
                             f"{optimizer_slots(optimizer) * n}")
        net.state = _io(state)
    cdef Step s
    s.learning_rate = learning_rate
    s.t = step
    cdef bint finite
    with nogil:
        finite = k.update_block(&net, &s, start, end - start)
    return bool(finite)


def _check_data(x, y, plan, pixels=False):
    """x (and y) fit the plan; pixels: x may also be uint8 (for a plan that takes_pixels).
    Returns whether x holds uint8 pixels."""
    is_pixels = (pixels and isinstance(x, np.ndarray) and x.dtype == np.uint8)
    if is_pixels:
        _check_pixels(x, plan)
    else:
        _check(x, "x", 2)
    n_in = plan.n_inputs
    if x.shape[1] != n_in:
        raise ValueError(f"x has {x.shape[1]} columns but the network takes {n_in}")
    if y is not None:
        _check(y, "y", 2)
        if y.shape != (x.shape[0], plan.n_outputs):
            raise ValueError(f"y has shape {y.shape}, expected {(x.shape[0], plan.n_outputs)}")
    return is_pixels


def _check_pixels(x, plan):
    if not plan.takes_pixels:
        raise TypeError("x holds uint8 pixels but the model's first layer is not Rescaling: "
                        "add mn.Rescaling(1/255) as its first layer, or divide by 255 "
                        "(x.astype(np.float32) / 255)")
    if x.ndim != 2 or not x.flags.c_contiguous or x.size == 0:
        raise ValueError(f"x must be a non-empty C-contiguous 2-D array, got shape {x.shape}")


cdef const unsigned char* _pixels(object x) except NULL:
    cdef cnp.ndarray arr = <cnp.ndarray>x
    if cnp.PyArray_TYPE(arr) != cnp.NPY_UINT8 or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise TypeError("internal: expected a C-contiguous uint8 array")
    return <const unsigned char*>cnp.PyArray_DATA(arr)


cdef InputRows _input_rows(object x, bint is_pixels, object plan, object values) except *:
    """How the compiled net, plan.engine, reads the rows of x: through the plan's leading
    Rescaling if it has one, pixels through `values` (pixel_values(plan), kept alive by the
    caller)."""
    cdef InputRows inputs
    row = plan.table[0]
    inputs.x = NULL if is_pixels else _in(x)
    inputs.pixels = _pixels(x) if is_pixels else NULL
    inputs.values = _in(values) if is_pixels else NULL
    inputs.products, inputs.hi, inputs.lo = (pixel_products(row["scale"], values)
                                             if is_pixels else (False, 0, 0))
    inputs.rescaling = plan.takes_pixels and not is_pixels
    inputs.scale = row["scale"]
    inputs.offset = row["offset"]
    return inputs


def pixel_products(double scale, values):
    """(True, hi, lo) when values, the 256 floats a Rescaling of `scale` makes of the pixel
    values, are exactly p * hi + p * lo in float32 for every pixel p (pixels_scaled,
    vectorised), hi being the scale to 16 significant bits and lo the rest; else (False, 0,
    0): the table is used."""
    hi = float((np.array(np.float32(scale)).view(np.uint32)
                & np.uint32(0xFFFFFF00)).view(np.float32))
    lo = float(np.float32(scale - hi))
    every = np.arange(256, dtype=np.float32)
    products = every * np.float32(hi) + every * np.float32(lo)
    if np.array_equal(products.view(np.uint32), values.view(np.uint32)):  # bits: -0 too
        return True, hi, lo
    return False, 0.0, 0.0


def _through_rescaling(x, bint is_pixels, plan):
    """x's rows as plan.engine takes them: through the plan's leading Rescaling."""
    if is_pixels:
        return pixel_values(plan)[x]
    row = plan.table[0]
    return rescaling_forward(None, x, row["scale"], row["offset"])


cdef void _set_step(Step* s, float learning_rate, long long iterations, key) except *:
    seed, epoch, step = key
    s.learning_rate = learning_rate
    s.t = iterations + 1
    s.seed = seed
    s.epoch = epoch
    s.index = step
    s.batch = 0  # set by the kernel from its row count


def train_step(plan, params, grads, state, acts, dacts, int loss, x, y, optimizer,
               float learning_rate, long long iterations, key) -> float:
    """One optimizer step (number iterations + 1) on the batch x (n, in), y (n, out), with
    dropout keyed by key = (seed, epoch, step). Returns the batch-mean loss; when it is
    NaN/Inf nothing is updated. A plan whose first layer is Rescaling takes x (float, or
    uint8 pixels) through it first, then steps the layers after it (plan.engine; acts and
    dacts sized for that)."""
    cdef bint is_pixels = _check_data(x, y, plan, pixels=True)
    if plan.takes_pixels:
        x, plan = _through_rescaling(x, is_pixels, plan), plan.engine
    cdef Py_ssize_t n = x.shape[0]
    cdef Net net = _net(plan, params, grads, state, acts, dacts, loss, n, optimizer)
    cdef Step s
    _set_step(&s, learning_rate, iterations, key)
    _place_batch(acts, x, y, plan)
    cdef double out
    with nogil:
        out = k.train_step(&net, n, &s)
    return out


def _place_batch(acts, x, y, plan):
    """The batch's inputs at the start of acts and its targets at the plan's targets
    offset, where a step reads them."""
    acts[: x.size] = x.reshape(-1)
    start = x.shape[0] * plan.targets
    acts[start: start + y.size] = y.reshape(-1)


def profile_step(plan, params, grads, state, acts, dacts, int loss, x, y, optimizer,
                 float learning_rate, long long iterations, key, int steps=10):
    """train_step `steps` times (steps iterations + 1, + 2, ...) on one thread, timing each
    layer's parts in the thread's CPU seconds. Returns (times, step): times (n_layers + 1, 3),
    the mean seconds a step of each layer's forward, backward (its input gradient, and the
    backward of its own activation) and weight gradient with the update, the last row's
    backward the loss's deltas; step the mean CPU seconds of a whole step."""
    _check_data(x, y, plan)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cdef Py_ssize_t n = x.shape[0]
    cdef Net net = _net(plan, params, grads, state, acts, dacts, loss, n, optimizer)
    times = np.zeros((plan.table.shape[0] + 1, 3), dtype=np.float64)
    cdef double[:, ::1] t = times
    net.profile = &t[0, 0]
    cdef Step s
    _set_step(&s, learning_rate, iterations, key)
    _place_batch(acts, x, y, plan)
    cdef double step_seconds
    with nogil:
        step_seconds = k.profile_steps(&net, n, &s, steps)
    return times / steps, step_seconds


def train_epoch(plan, params, grads, state, acts, dacts, int loss, x, y, perm,
                Py_ssize_t batch_size, optimizer, learning_rates, long long iterations, key):
    """One epoch of minibatch training over x[perm], batch_size rows at a time, entirely in
    compiled code without the GIL. Batch b uses learning_rates[b] and is optimizer step
    iterations + b + 1; key = (seed, epoch, first step) keys the dropout masks. Returns
    (loss_sum, correct, seen, batches, status): see mnistnet.reference.train_epoch. Ctrl-C
    raises KeyboardInterrupt between two steps. When the plan's first layer is Rescaling
    (plan.takes_pixels), each row gathered goes through it (x may then hold uint8 pixels,
    which go through its outputs for the 256 values, pixel_values) and the steps run the
    layers after it, plan.engine: acts and dacts are sized for that (its buffer_sizes)."""
    cdef bint is_pixels = _check_data(x, y, plan, pixels=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cdef const long long[::1] p = np.ascontiguousarray(perm, dtype=np.int64)
    if p.shape[0] and (np.min(p) < 0 or np.max(p) >= x.shape[0]):
        raise ValueError(f"perm must index the {x.shape[0]} rows of x")
    cdef Net net = _net(plan.engine, params, grads, state, acts, dacts, loss, batch_size,
                        optimizer)
    if net.grads == NULL:
        raise ValueError("train_epoch needs grads and dacts")
    steps = -(-p.shape[0] // batch_size)
    _check(learning_rates, "learning_rates", 1) if steps else None
    if steps and learning_rates.shape[0] < steps:
        raise ValueError(f"learning_rates has {learning_rates.shape[0]} entries, the epoch "
                         f"has {steps} batches")
    cdef EpochArgs args
    values = pixel_values(plan) if is_pixels else None
    args.inputs = _input_rows(x, is_pixels, plan, values)
    args.y = _in(y)
    args.perm = &p[0] if p.shape[0] else NULL
    args.N = p.shape[0]
    args.batch_size = batch_size
    args.learning_rates = _in(learning_rates) if steps else NULL
    args.iterations = iterations
    args.seed, args.epoch, args.first_step = key
    cdef EpochResult r
    with nogil:
        r = k.train_epoch(&net, &args)
    if r.status == k.EPOCH_INTERRUPTED:
        _reraise()
    return r.loss_sum, r.correct, r.seen, r.batches, r.status


def layer_pair(plan, params, grads, acts, dacts, Py_ssize_t l, x, dout=None, key=None):
    """Layer l of the plan alone, as the compiled step runs it: its forward on the n samples
    x (n, its inputs) — in training when key = (seed, epoch, step) is given, else as predict
    does — and in training, given dout = d(loss)/d(its pre-activation output) (n, its
    outputs), d(loss)/d(its input). acts and dacts are blocks for n rows (Plan.buffer_sizes).
    Returns (its output after its activation, the input gradient or None). For testing each
    layer kind's kernels against its twin (mnistnet.kinds)."""
    if not 0 <= l < plan.table.shape[0]:
        raise ValueError(f"the plan has no layer {l}")
    _check(x, "x", 2)
    cdef Py_ssize_t n = x.shape[0]
    row = plan.table[l]
    if x.shape[1] != row["n_in"]:
        raise ValueError(f"x has {x.shape[1]} columns but layer {l} takes {row['n_in']}")
    settings = codes.optimizer_settings("sgd")
    cdef Net net = _net(plan, params, grads, None, acts, dacts, k.LOSS_MSE, n, settings)
    cdef Step s
    cdef Step* sp = NULL
    if key is not None:
        _set_step(&s, 0.0, 0, key)
        s.batch = n
        sp = &s
    acts[n * row["act_in"]: n * (row["act_in"] + row["n_in"])] = x.reshape(-1)
    if dout is not None:
        _check(dout, "dout", 2)
        if dout.shape != (n, row["n_out"]) or row["dact_out"] < 0:
            raise ValueError(f"dout must be ({n}, {row['n_out']}) for a layer whose output "
                             "has a gradient")
        dacts[n * row["dact_out"]: n * (row["dact_out"] + row["n_out"])] = dout.reshape(-1)
    with nogil:
        k.layer_pair(&net, sp, l, n)
    out = acts[n * row["act_out"]: n * (row["act_out"] + row["n_out"])].reshape(n, -1).copy()
    if key is None or dout is None or row["dact_in"] < 0:
        return out, None
    dinp = dacts[n * row["dact_in"]: n * (row["dact_in"] + row["n_in"])].reshape(n, -1).copy()
    return out, dinp


cdef int _reraise() except -1:
    # The signal handler's exception (KeyboardInterrupt) is already set: returning -1 from
    # an `except -1` function makes Cython propagate it.
    return -1


def predict(plan, params, acts, x, out, Py_ssize_t chunk):
    """Forward x (n, in) into out (n, outputs), `chunk` rows at a time, with acts (room for
    `chunk` rows, see Plan.buffer_sizes) as scratch; dropout passes its input through. x may
    hold uint8 pixels when the plan's first layer is Rescaling (see train_epoch); acts then
    needs room for plan.engine's chunk (no more than the plan's own). Returns out."""
    cdef bint is_pixels = _check_data(x, None, plan, pixels=True)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = _out(out, "out", (x.shape[0], plan.n_outputs))
    cdef Net net = _net(plan.engine, params, None, None, acts, None, k.LOSS_MSE, chunk, None)
    cdef float* po = _io(out)
    cdef Py_ssize_t N = x.shape[0]
    values = pixel_values(plan) if is_pixels else None
    cdef InputRows inputs = _input_rows(x, is_pixels, plan, values)
    with nogil:
        k.net_predict_inputs(&net, &inputs, po, N)
    return out
