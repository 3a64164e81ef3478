# cython: language_level=3
"""The compiled backend, seen from Python: one `def` per kernel of mnistnet._kernels.

Names and argument order are those of mnistnet.reference, the NumPy twin: outputs first
(None allocates them), then inputs, then weights. Each wrapper checks dtypes and shapes and
raises ValueError/TypeError naming the argument, then runs the kernel with the GIL released.
Kernels never see arrays that are not C-contiguous float32.
"""
cimport mnistnet._kernels as k
cimport numpy as cnp
from mnistnet._kernels cimport Net, EpochResult

import numpy as np

cnp.import_array()

# The buffer layout is one contract for both backends: reference.py states it.
from mnistnet.reference import buffer_sizes, team_threads  # noqa: F401  (re-exported)
from mnistnet._kernels import (  # noqa: F401  (re-exported: runtime configuration)
    ACTIVATIONS, LOSSES, SIMD_PATHS, get_num_threads, openmp_enabled, select_simd,
    set_num_threads, sgemm, simd_path, simd_supported,
)

EPOCH_DONE = k.EPOCH_DONE
EPOCH_NONFINITE_LOSS = k.EPOCH_NONFINITE_LOSS
EPOCH_INTERRUPTED = k.EPOCH_INTERRUPTED
EPOCH_NONFINITE_INPUT = k.EPOCH_NONFINITE_INPUT

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
        else:
            k.relu_backward(pd, po, pg, N)
    return dinp


def linear_forward(out, inp):
    """out = inp (the identity activation)."""
    return _elementwise_forward(k.ACT_LINEAR, out, inp)


def linear_backward(dinp, out, dout):
    """dinp = dout."""
    return _elementwise_backward(k.ACT_LINEAR, dinp, out, dout)


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

# ---- losses, SGD, metrics ------------------------------------------------------------------

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

# ---- the network ---------------------------------------------------------------------------

cdef Net _net(params, grads, acts, dacts, sizes, act_codes, int loss, Py_ssize_t rows) except *:
    """A Net over the caller's buffers, after checking they fit the architecture."""
    cdef const int[::1] s = sizes
    cdef const int[::1] a = act_codes
    cdef Py_ssize_t L = a.shape[0], i
    if L < 1 or s.shape[0] != L + 1:
        raise ValueError(f"sizes {list(s)} must have one more entry than act_codes {list(a)}")
    if min(s) < 1:
        raise ValueError(f"layer widths must be >= 1, got {list(s)}")
    for i in range(L):
        if a[i] not in ACTIVATIONS.values():
            raise ValueError(f"unknown activation code {a[i]} in act_codes {list(a)}")
    if loss not in LOSSES.values():
        raise ValueError(f"unknown loss code {loss}")
    n_p, n_a, n_d = buffer_sizes(list(s), rows)
    _check(params, "params", 1)
    if params.shape[0] != n_p:
        raise ValueError(f"params holds {params.shape[0]} floats, widths {list(s)} need {n_p}")
    _check(acts, "acts", 1)
    if acts.shape[0] < n_a:
        raise ValueError(f"acts holds {acts.shape[0]} floats, {rows} rows need {n_a}")
    cdef Net net
    net.n_layers = L
    net.sizes = &s[0]
    net.acts = &a[0]
    net.loss = loss
    net.params = _io(params)
    net.a = _io(acts)
    net.rows = rows
    net.grads = NULL
    net.d = NULL
    net.team_threads = 1
    net.w0t = NULL
    net.g0t = NULL
    if grads is not None:
        _check(grads, "grads", 1); _check(dacts, "dacts", 1)
        if grads.shape[0] != n_p or dacts.shape[0] < n_d:
            raise ValueError(f"grads/dacts are too small for widths {list(s)} and {rows} rows")
        net.grads = _io(grads)
        net.d = _io(dacts)
        net.team_threads = team_threads(list(s), rows, dacts.shape[0])
    return net


def _check_data(x, y, sizes):
    _check(x, "x", 2)
    if x.shape[1] != sizes[0]:
        raise ValueError(f"x has {x.shape[1]} columns but the network takes {sizes[0]}")
    if y is not None:
        _check(y, "y", 2)
        if y.shape != (x.shape[0], sizes[-1]):
            raise ValueError(f"y has shape {y.shape}, expected {(x.shape[0], sizes[-1])}")


def train_step(params, grads, acts, dacts, sizes, act_codes, int loss, x, y,
               float learning_rate) -> float:
    """One SGD step on the batch x (n, in), y (n, out). Returns the batch-mean loss; when it
    is NaN/Inf nothing is updated."""
    _check_data(x, y, sizes)
    cdef Py_ssize_t n = x.shape[0]
    cdef Net net = _net(params, grads, acts, dacts, sizes, act_codes, loss, n)
    cdef Py_ssize_t L = net.n_layers
    acts[: x.size] = x.reshape(-1)
    cdef float* targets = k.net_acts(&net, L + 1)
    cdef const float* py = _in(y)
    cdef Py_ssize_t i
    for i in range(y.size):
        targets[i] = py[i]
    cdef double out
    with nogil:
        out = k.train_step(&net, n, learning_rate)
    return out


def train_epoch(params, grads, acts, dacts, sizes, act_codes, int loss, x, y, perm,
                Py_ssize_t batch_size, float learning_rate):
    """One epoch of minibatch SGD over x[perm], batch_size rows at a time, entirely in
    compiled code without the GIL. Returns (loss_sum, correct, seen, batches, status): see
    mnistnet.reference.train_epoch. Ctrl-C raises KeyboardInterrupt between two steps."""
    _check_data(x, y, sizes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cdef const long long[::1] p = np.ascontiguousarray(perm, dtype=np.int64)
    if p.shape[0] and (np.min(p) < 0 or np.max(p) >= x.shape[0]):
        raise ValueError(f"perm must index the {x.shape[0]} rows of x")
    cdef Net net = _net(params, grads, acts, dacts, sizes, act_codes, loss, batch_size)
    if net.grads == NULL:
        raise ValueError("train_epoch needs grads and dacts")
    cdef const float* px = _in(x)
    cdef const float* py = _in(y)
    cdef const long long* pp = &p[0] if p.shape[0] else NULL
    cdef Py_ssize_t N = p.shape[0]
    cdef EpochResult r
    with nogil:
        r = k.train_epoch(&net, px, py, pp, N, batch_size, learning_rate)
    if r.status == k.EPOCH_INTERRUPTED:
        _reraise()
    return r.loss_sum, r.correct, r.seen, r.batches, r.status


cdef int _reraise() except -1:
    # The signal handler's exception (KeyboardInterrupt) is already set: returning -1 from
    # an `except -1` function makes Cython propagate it.
    return -1


def predict(params, acts, sizes, act_codes, x, out, Py_ssize_t chunk):
    """Forward x (n, in) into out (n, out_width), `chunk` rows at a time, with acts (room for
    `chunk` rows, see buffer_sizes) as scratch. Returns out."""
    _check_data(x, None, sizes)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = _out(out, "out", (x.shape[0], sizes[-1]))
    cdef Net net = _net(params, None, acts, None, sizes, act_codes, k.LOSS_MSE, chunk)
    cdef const float* px = _in(x)
    cdef float* po = _io(out)
    cdef Py_ssize_t N = x.shape[0]
    with nogil:
        k.net_predict(&net, px, po, N)
    return out
