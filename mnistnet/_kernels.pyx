# cython: language_level=3
"""Compiled kernels: dense layers, activations, losses, SGD, one step and the epoch loop.

Every kernel here is a `cdef ... noexcept nogil` function over raw float32 pointers,
declared in _kernels.pxd so other Cython code can `cimport` it. The Python-facing wrappers
(same names, shape checks, `out=None`) are in mnistnet.fast, and their NumPy twins in
mnistnet.reference. The dense-layer GEMMs are C (csrc/), with the SIMD path chosen at run
time; this module also exposes that path and the thread count to Python.
"""
from libc.math cimport INFINITY, expf, isfinite, logf
from libc.string cimport memcpy

from cython.parallel cimport parallel

import numpy as np

cdef extern from "mn_kernels.h" nogil:
    void mn_dense_forward(float *out, const float *inp, const float *weight, const float *bias,
                          Py_ssize_t B, Py_ssize_t C, Py_ssize_t OC)
    void mn_dense_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight,
                           Py_ssize_t B, Py_ssize_t C, Py_ssize_t OC)
    void mn_sgemm_nn(float *c, const float *a, const float *b, const float *bias,
                     Py_ssize_t M, Py_ssize_t K, Py_ssize_t N)
    int mn_sgd_update(float *params, const float *grads, float learning_rate, Py_ssize_t n)
    void mn_sgemm_nt(float *c, const float *a, const float *b, Py_ssize_t M, Py_ssize_t K,
                     Py_ssize_t N)
    void mn_sgemm_nt_strided(float *c, Py_ssize_t ldc, const float *a, Py_ssize_t lda,
                             const float *b, Py_ssize_t ldb, Py_ssize_t M, Py_ssize_t K,
                             Py_ssize_t N)
    void mn_sgemm_strided(float *c, Py_ssize_t ldc, const float *a, Py_ssize_t a_rs,
                          Py_ssize_t a_cs, const float *b, Py_ssize_t ldb, const float *bias,
                          Py_ssize_t M, Py_ssize_t K, Py_ssize_t N)
    int mn_sgemm_sgd(float *g, Py_ssize_t ldg, const float *a, Py_ssize_t a_rs,
                     Py_ssize_t a_cs, const float *b, Py_ssize_t ldb, float *w, Py_ssize_t ldw,
                     float learning_rate, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N)
    void mn_column_sums(float *sums, const float *x, Py_ssize_t B, Py_ssize_t C)
    void mn_column_sums_block(float *sums, const float *x, Py_ssize_t c0, Py_ssize_t c1,
                              Py_ssize_t B, Py_ssize_t C)
    int mn_all_finite(const float *x, Py_ssize_t n)
    int mn_copy_finite(float *dst, const float *src, Py_ssize_t n)
    void mn_sigmoid_forward(float *out, const float *inp, Py_ssize_t n)
    void mn_softmax_forward(float *out, const float *inp, Py_ssize_t B, Py_ssize_t C)
    void mn_prefetch_rows(const float *x, const long long *rows, Py_ssize_t n,
                          Py_ssize_t width)
    void mn_prefetch_rows_later(const float *x, const long long *rows, Py_ssize_t n,
                                Py_ssize_t width)
    void mn_prefetch_columns_later(const float *x, Py_ssize_t ld, const long long *rows,
                                   Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1)
    void mn_prefetch_flush()
    const char *mn_simd_name()
    int mn_simd_select(const char *name)
    int mn_simd_supported(const char *name)
    void mn_set_num_threads(int n)
    int mn_get_num_threads()
    void mn_set_thread_cap(int n)
    int mn_team_rank()
    int mn_team_size()
    void mn_team_barrier()
    int mn_openmp_enabled()
    double mn_seconds()

cdef extern from "Python.h":
    int PyErr_CheckSignals()   # no `except`: train_epoch reports it as EPOCH_INTERRUPTED

# Names of the codes in _kernels.pxd, for the Python side.
ACTIVATIONS = {"linear": ACT_LINEAR, "sigmoid": ACT_SIGMOID, "relu": ACT_RELU,
               "softmax": ACT_SOFTMAX}
LOSSES = {"mse": LOSS_MSE, "categorical_crossentropy": LOSS_CE}

# Keras' clip for cross-entropy: probabilities are kept in [EPS, 1 - EPS] before the log.
cdef float CE_EPSILON = 1e-7
# How often (seconds) the epoch loop takes the GIL to look for Ctrl-C.
cdef double SIGNAL_CHECK_INTERVAL = 0.002

# ============================================================================================
# cdef kernels (declared in _kernels.pxd)
# ============================================================================================

cdef void dense_forward(float* out, const float* inp, const float* weight, const float* bias,
                        Py_ssize_t B, Py_ssize_t C, Py_ssize_t OC) noexcept nogil:
    mn_dense_forward(out, inp, weight, bias, B, C, OC)


cdef void dense_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight,
                         Py_ssize_t B, Py_ssize_t C, Py_ssize_t OC) noexcept nogil:
    mn_dense_backward(dinp, dweight, dbias, dout, inp, weight, B, C, OC)


cdef void linear_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil:
    if out != inp:
        memcpy(out, inp, N * sizeof(float))


cdef void linear_backward(float* dinp, const float* out, const float* dout,
                          Py_ssize_t N) noexcept nogil:
    if dinp != dout:
        memcpy(dinp, dout, N * sizeof(float))


cdef void sigmoid_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil:
    mn_sigmoid_forward(out, inp, N)


cdef void sigmoid_backward(float* dinp, const float* out, const float* dout,
                           Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(N):
        dinp[i] = dout[i] * (out[i] * (1.0 - out[i]))


cdef void relu_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(N):
        # Written so that NaN propagates (NaN <= 0 is false), as np.maximum does.
        out[i] = 0.0 if inp[i] <= 0 else inp[i]


cdef void relu_backward(float* dinp, const float* out, const float* dout,
                        Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(N):
        dinp[i] = dout[i] if out[i] > 0 else 0.0


cdef void softmax_forward(float* out, const float* inp, Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    mn_softmax_forward(out, inp, B, C)


cdef void softmax_backward(float* dinp, const float* out, const float* dout,
                           Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    # dinp = out * (dout - <dout, out>) per row; the dot product is taken before any write,
    # so dinp may alias dout.
    cdef Py_ssize_t b, c
    cdef float dot
    for b in range(B):
        dot = 0
        for c in range(C):
            dot = dot + dout[b * C + c] * out[b * C + c]
        for c in range(C):
            dinp[b * C + c] = out[b * C + c] * (dout[b * C + c] - dot)


cdef double mse_forward(const float* pred, const float* target,
                        Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    # Keras: mean over outputs, then over the batch = sum / (B * C).
    cdef Py_ssize_t i
    cdef double total = 0
    cdef float d
    for i in range(B * C):
        d = pred[i] - target[i]
        total += <double>(d * d)
    return total / (B * C)


cdef void mse_backward(float* dpred, const float* pred, const float* target,
                       Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    scaled_difference(dpred, pred, target, B * C, 2.0 / <float>(B * C))


cdef inline void scaled_difference(float* out, const float* a, const float* b, Py_ssize_t N,
                                   float scale) noexcept nogil:
    # out = scale * (a - b): both loss gradients, for any block of rows of a batch.
    cdef Py_ssize_t i
    for i in range(N):
        out[i] = scale * (a[i] - b[i])


cdef double crossentropy_forward(const float* probs, const float* target,
                                 Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    # Keras 3: renormalise each row, clip to [eps, 1 - eps], then -sum(target * log(p)).
    # Terms with target 0 contribute exactly 0 and are skipped (no log computed).
    cdef Py_ssize_t b, c
    cdef double total = 0
    cdef float s, p
    for b in range(B):
        s = 0
        for c in range(C):
            s = s + probs[b * C + c]
        for c in range(C):
            if target[b * C + c] != 0:
                p = probs[b * C + c] / s
                if p < CE_EPSILON:
                    p = CE_EPSILON
                elif p > 1 - CE_EPSILON:
                    p = 1 - CE_EPSILON
                total -= <double>(target[b * C + c] * logf(p))
    return total / B


cdef void crossentropy_softmax_backward(float* dlogits, const float* probs, const float* target,
                                        Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    # Gradient of the batch-mean cross-entropy w.r.t. the softmax *input*: (probs - y) / B.
    # Exact for softmax + CE with rows of y summing to 1 (the clip is not differentiated).
    scaled_difference(dlogits, probs, target, B * C, 1.0 / <float>B)


cdef bint sgd_update(float* params, const float* grads, float learning_rate,
                     Py_ssize_t N) noexcept nogil:
    return mn_sgd_update(params, grads, learning_rate, N)


cdef bint all_finite(const float* x, Py_ssize_t N) noexcept nogil:
    return mn_all_finite(x, N)


cdef inline Py_ssize_t argmax_row(const float* x, Py_ssize_t C) noexcept nogil:
    # First index of the maximum, as np.argmax.
    cdef Py_ssize_t c, best = 0
    for c in range(1, C):
        if x[c] > x[best]:
            best = c
    return best


cdef Py_ssize_t count_correct(const float* pred, const float* target,
                              Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t b, n = 0
    for b in range(B):
        if argmax_row(pred + b * C, C) == argmax_row(target + b * C, C):
            n += 1
    return n

# ============================================================================================
# The network: forward, backward, one step and the epoch loop over one flat parameter block
# ============================================================================================

cdef inline Py_ssize_t param_offset(const Net* net, Py_ssize_t l) noexcept nogil:
    cdef Py_ssize_t i, off = 0
    for i in range(l):
        off += <Py_ssize_t>net.sizes[i] * net.sizes[i + 1] + net.sizes[i + 1]
    return off


cdef Py_ssize_t net_n_params(const Net* net) noexcept nogil:
    return param_offset(net, net.n_layers)


cdef float* net_acts(const Net* net, Py_ssize_t l) noexcept nogil:
    """Region l of net.a: the input (l = 0), layer l-1's output, or the targets
    (l = n_layers + 1)."""
    cdef Py_ssize_t i, off = 0
    for i in range(l):
        off += net.rows * net.sizes[i]
    return net.a + off


cdef inline float* grad_region(const Net* net, Py_ssize_t l) noexcept nogil:
    cdef Py_ssize_t i, off = 0
    for i in range(l):
        off += net.rows * net.sizes[i + 1]
    return net.d + off


cdef void activation_forward(int code, float* x, Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    if code == ACT_SIGMOID:
        sigmoid_forward(x, x, B * C)
    elif code == ACT_RELU:
        relu_forward(x, x, B * C)
    elif code == ACT_SOFTMAX:
        softmax_forward(x, x, B, C)


cdef void activation_backward(int code, float* dx, const float* out,
                              Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    if code == ACT_SIGMOID:
        sigmoid_backward(dx, out, dx, B * C)
    elif code == ACT_RELU:
        relu_backward(dx, out, dx, B * C)
    elif code == ACT_SOFTMAX:
        softmax_backward(dx, out, dx, B, C)


cdef void net_forward(const Net* net, const float* x, float* out, Py_ssize_t n) noexcept nogil:
    """Forward n <= net.rows rows. Hidden layers write their regions of net.a; the last
    layer writes out (which may be its own region)."""
    forward_rows(net, 0, x, out, 0, n)


cdef void forward_rows(const Net* net, Py_ssize_t first, const float* x, float* out,
                       Py_ssize_t r0, Py_ssize_t n) noexcept nogil:
    """Forward layers first.. of the n rows x (n, sizes[first]) that are rows r0.. of the
    batch: hidden outputs go to those rows of their regions, the last layer's to out
    (n, sizes[-1]). Rows are independent, so threads may each forward their own block."""
    cdef Py_ssize_t l, L = net.n_layers
    cdef const float* inp = x
    cdef float* o
    cdef float* w
    for l in range(first, L):
        o = out if l == L - 1 else net_acts(net, l + 1) + r0 * net.sizes[l + 1]
        w = net.params + param_offset(net, l)
        if l == 0 and net.w0t != NULL:
            # The first layer's delta region is free until the backward pass.
            transposed_first_layer_forward(net, o, grad_region(net, 0) + r0 * net.sizes[1],
                                           inp, n)
        else:
            dense_forward(o, inp, w, w + <Py_ssize_t>net.sizes[l] * net.sizes[l + 1],
                          n, net.sizes[l], net.sizes[l + 1])
        activation_forward(net.acts[l], o, n, net.sizes[l + 1])
        inp = o


cdef void transposed_first_layer_forward(const Net* net, float* out, float* scratch,
                                         const float* inp, Py_ssize_t n) noexcept nogil:
    """out = inp @ w0t^T + bias for the n rows inp: dot products along the inputs (see
    trains_transposed), over the two pieces of them (narrow_split) apart, then added. Two
    threads can then each take a piece (inputs_team_member) and get the same bits.
    scratch: room for n rows of the output."""
    cdef Py_ssize_t C = net.sizes[0], H = net.sizes[1], k = narrow_split(net)
    mn_sgemm_nt_strided(out, H, inp, C, net.w0t, C, n, k, H)
    mn_sgemm_nt_strided(scratch, H, inp + k, C, net.w0t + k, C, n, C - k, H)
    add_pieces(out, out, scratch, net.params + C * H, n, H)


cdef inline Py_ssize_t narrow_split(const Net* net) noexcept nogil:
    # Where the first piece of a narrow first layer's inputs ends: at a whole vector.
    cdef Py_ssize_t j0, j1
    column_block(net.sizes[0], 0, 2, &j0, &j1)
    return j1


cdef inline void add_pieces(float* out, const float* first, const float* second,
                            const float* bias, Py_ssize_t n, Py_ssize_t H) noexcept nogil:
    cdef Py_ssize_t r, j
    for r in range(n):
        for j in range(H):
            out[r * H + j] = (first[r * H + j] + second[r * H + j]) + bias[j]


cdef inline double loss_forward(int loss, const float* pred, const float* target,
                                Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    if loss == LOSS_CE:
        return crossentropy_forward(pred, target, B, C)
    return mse_forward(pred, target, B, C)


cdef void net_backward(const Net* net, const float* target, Py_ssize_t n) noexcept nogil:
    """Gradients of the batch-mean loss into net.grads, from the activations the last
    net_forward over the input region left behind."""
    cdef Py_ssize_t l
    deltas_rows(net, target, 0, n, n)
    for l in range(net.n_layers):
        weight_grads_rows(net, l, 0, net.sizes[l], n, True)


cdef void deltas_rows(const Net* net, const float* target, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t n) noexcept nogil:
    """d(loss)/d(pre-activation) of every layer, rows r0..r1 of a batch of n. Rows are
    independent (the weights are only read), so threads may each take a block."""
    cdef Py_ssize_t l, L = net.n_layers, OC = net.sizes[L], nr = r1 - r0
    cdef const float* probs = net_acts(net, L) + r0 * OC
    cdef const float* t = target + r0 * OC
    cdef float* dz = grad_region(net, L - 1) + r0 * OC
    cdef float* dinp
    output_deltas(net, dz, probs, t, nr, n)
    # The input gradient of the first layer is never used: stop at layer 1.
    for l in range(L - 1, 0, -1):
        dz = grad_region(net, l) + r0 * net.sizes[l + 1]
        dinp = grad_region(net, l - 1) + r0 * net.sizes[l]
        mn_sgemm_nt(dinp, dz, net.params + param_offset(net, l), nr, net.sizes[l + 1],
                    net.sizes[l])
        activation_backward(net.acts[l - 1], dinp, net_acts(net, l) + r0 * net.sizes[l],
                            nr, net.sizes[l])


cdef inline void output_deltas(const Net* net, float* dz, const float* probs,
                               const float* target, Py_ssize_t nr, Py_ssize_t n) noexcept nogil:
    # d(loss)/d(the last layer's pre-activation) for nr rows of a batch of n.
    cdef Py_ssize_t L = net.n_layers, OC = net.sizes[L]
    if net.loss == LOSS_CE and net.acts[L - 1] == ACT_SOFTMAX:
        scaled_difference(dz, probs, target, nr * OC, 1.0 / <float>n)  # fused softmax + CE
    else:
        scaled_difference(dz, probs, target, nr * OC, 2.0 / <float>(n * OC))  # MSE
        activation_backward(net.acts[L - 1], dz, probs, nr, OC)


cdef void weight_grads_rows(const Net* net, Py_ssize_t l, Py_ssize_t c0, Py_ssize_t c1,
                            Py_ssize_t n, bint with_bias) noexcept nogil:
    """Rows c0..c1 of layer l's weight gradient (inp^T @ dz over the n batch rows), and its
    bias gradient if with_bias. Threads may each take a block of rows."""
    cdef Py_ssize_t C = net.sizes[l], OC = net.sizes[l + 1]
    cdef float* gw = net.grads + param_offset(net, l)
    cdef const float* dz = grad_region(net, l)
    mn_sgemm_strided(gw + c0 * OC, OC, net_acts(net, l) + c0, 1, C, dz, OC, NULL, c1 - c0, n,
                     OC)
    if with_bias:
        mn_column_sums(gw + C * OC, dz, n, OC)


# Narrower rows than this are mostly masked vector tails, which an update fused into the
# GEMM's tiles pays for at every row: a separate pass over the contiguous block is faster
# (measured on the perceptron's 784x10 layer before it trained transposed: 61 ms an epoch
# fused, 51 ms apart). Narrow layers after the first still take that path.
cdef Py_ssize_t FUSED_SGD_MIN_WIDTH = 32


cdef bint weight_grads_sgd_rows(const Net* net, Py_ssize_t l, Py_ssize_t c0, Py_ssize_t c1,
                                Py_ssize_t n, bint with_bias, float learning_rate) noexcept nogil:
    """weight_grads_rows, then the SGD step on the same block: for wide layers fused, each
    tile of the gradient applied while it is still in registers. Returns whether every
    updated value stayed finite."""
    cdef Py_ssize_t C = net.sizes[l], OC = net.sizes[l + 1]
    cdef float* gw = net.grads + param_offset(net, l)
    cdef float* w = net.params + param_offset(net, l)
    cdef const float* dz = grad_region(net, l)
    cdef bint finite
    if l == 0 and net.w0t != NULL:
        # The transposed gradient dz^T @ inp: each element is the same chain of
        # multiply-adds over the batch rows, so the same bits as the row-major one.
        finite = mn_sgemm_sgd(net.g0t + c0, C, dz, 1, OC, net_acts(net, 0) + c0, C,
                              net.w0t + c0, C, learning_rate, OC, n, c1 - c0)
    elif OC >= FUSED_SGD_MIN_WIDTH:
        finite = mn_sgemm_sgd(gw + c0 * OC, OC, net_acts(net, l) + c0, 1, C, dz, OC,
                              w + c0 * OC, OC, learning_rate, c1 - c0, n, OC)
    else:
        mn_sgemm_strided(gw + c0 * OC, OC, net_acts(net, l) + c0, 1, C, dz, OC, NULL, c1 - c0,
                         n, OC)
        finite = sgd_update(w + c0 * OC, gw + c0 * OC, learning_rate, (c1 - c0) * OC)
    if with_bias:
        mn_column_sums(gw + C * OC, dz, n, OC)
        finite &= sgd_update(w + C * OC, gw + C * OC, learning_rate, OC)
    return finite


# A first layer narrower than this, and not a whole number of 16-float vectors, trains on a
# transposed copy of its weights: the row-major GEMMs vectorise along its outputs, mostly
# masked lanes here, the transposed ones along its inputs (the perceptron's 784x10 layer:
# forward 5.4 -> 3.1 us, gradient and update 8.7 -> 3.3 us a batch of 32).
cdef Py_ssize_t NARROW_WIDTH = 32


cdef inline bint trains_transposed(const Net* net) noexcept nogil:
    cdef Py_ssize_t H = net.sizes[1]
    return H < NARROW_WIDTH and H % COLUMN_ALIGN != 0


cdef void transpose(float* dst, const float* src, Py_ssize_t rows,
                    Py_ssize_t cols) noexcept nogil:
    # dst (cols, rows) = src (rows, cols)^T
    cdef Py_ssize_t r, c
    for r in range(rows):
        for c in range(cols):
            dst[c * rows + r] = src[r * cols + c]


cdef Net for_training(const Net* net) noexcept nogil:
    """net, with its first layer's weights and gradient copied transposed into the workspace
    when it trains that way (trains_transposed). end_training copies them back. Whatever
    w0t and g0t the caller's Net holds are ignored."""
    cdef Net t = net[0]
    cdef Py_ssize_t C0 = net.sizes[0], H = net.sizes[1]
    t.w0t = NULL
    t.g0t = NULL
    if trains_transposed(net):
        t.w0t = workspace(net)
        t.g0t = t.w0t + C0 * H
        transpose(t.w0t, net.params, C0, H)
        transpose(t.g0t, net.grads, C0, H)
    return t


cdef void end_training(const Net* t) noexcept nogil:
    cdef Py_ssize_t C0 = t.sizes[0], H = t.sizes[1]
    if t.w0t != NULL:
        transpose(t.params, t.w0t, H, C0)
        transpose(t.grads, t.g0t, H, C0)


cdef double train_step(const Net* net, Py_ssize_t n, float learning_rate) noexcept nogil:
    """Forward, loss, backward and SGD update on the n rows already in the input and target
    regions. Returns the batch-mean loss; if it is not finite, nothing is updated. If the
    update would make some weight NaN or Inf, those weights keep their values and the step
    returns Inf. The gradient is left in net.grads."""
    cdef Net t = for_training(net)
    cdef double loss = sgd_step(&t, n, learning_rate)
    end_training(&t)
    return loss


cdef double sgd_step(const Net* net, Py_ssize_t n, float learning_rate) noexcept nogil:
    # train_step on a net already set up by for_training.
    cdef Py_ssize_t l, L = net.n_layers
    cdef float* probs = net_acts(net, L)
    net_forward(net, net.a, probs, n)
    cdef double loss = loss_forward(net.loss, probs, net_acts(net, L + 1), n, net.sizes[L])
    if not isfinite(loss):
        return loss
    # Every delta first (they need the weights as they were), then each layer's gradient,
    # applied as it is computed.
    deltas_rows(net, net_acts(net, L + 1), 0, n, n)
    cdef bint finite = True
    for l in range(L):
        finite &= weight_grads_sgd_rows(net, l, 0, net.sizes[l], n, True, learning_rate)
    if not finite:
        return INFINITY  # the update overflowed: report the step as non-finite
    return loss


cdef inline void gather_rows(float* dst, const float* src, const long long* rows,
                             Py_ssize_t n, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(n):
        memcpy(dst + r * width, src + rows[r] * width, width * sizeof(float))


cdef bint gather_inputs(float* dst, const float* x, const long long* rows, Py_ssize_t n,
                        Py_ssize_t width, Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    # Columns k0..k1 of rows of x (row width `width`), packed: dst (n, k1 - k0). Returns
    # whether they are all finite (the epoch's check of its inputs).
    cdef Py_ssize_t r
    cdef bint finite = True
    for r in range(n):
        finite &= mn_copy_finite(dst + r * (k1 - k0), x + rows[r] * width + k0, k1 - k0)
    return finite


cdef inline void block_of(Py_ssize_t n, int rank, int size, Py_ssize_t* r0,
                          Py_ssize_t* r1) noexcept nogil:
    # Contiguous blocks whose sizes differ by at most one.
    cdef Py_ssize_t base = n // size, extra = n % size
    r0[0] = rank * base + (rank if rank < extra else extra)
    r1[0] = r0[0] + base + (1 if rank < extra else 0)


cdef inline bint time_to_check_signals(double* last_check) noexcept nogil:
    cdef double now = mn_seconds()
    if now - last_check[0] < SIGNAL_CHECK_INTERVAL:
        return False
    last_check[0] = now
    return True


cdef inline void count_step(EpochResult* res, double loss_sum, Py_ssize_t correct,
                            Py_ssize_t n) noexcept nogil:
    res.loss_sum += loss_sum
    res.correct += correct
    res.seen += n
    res.batches += 1


cdef Py_ssize_t serial_stretch(const Net* net, const float* x, const float* y,
                               const long long* perm, Py_ssize_t start, Py_ssize_t end,
                               Py_ssize_t N, Py_ssize_t batch_size, float learning_rate,
                               EpochResult* res, double* last_check) noexcept nogil:
    """Batches starting at rows start.. < end on the calling thread. Returns the next start."""
    cdef Py_ssize_t L = net.n_layers, C0 = net.sizes[0], OC = net.sizes[L], n
    cdef float* targets = net_acts(net, L + 1)
    cdef double loss
    mn_set_thread_cap(1)
    while start < end and res.status == EPOCH_DONE:
        n = batch_size if N - start > batch_size else N - start
        if not gather_inputs(net.a, x, perm + start, n, C0, 0, C0):
            res.status = EPOCH_NONFINITE_INPUT  # before this batch's step
            break
        gather_rows(targets, y, perm + start, n, OC)
        # The next batch's rows are scattered over the dataset: fetch them during this step.
        if start + n < N:
            mn_prefetch_rows_later(x, perm + start + n, min(batch_size, N - start - n), C0)
        loss = sgd_step(net, n, learning_rate)
        mn_prefetch_flush()
        if not isfinite(loss):
            res.status = EPOCH_NONFINITE_LOSS
            break
        # The accuracy Keras reports uses the predictions made before this batch's update.
        count_step(res, loss * n, count_correct(net_acts(net, L), targets, n, OC), n)
        start += n
        if time_to_check_signals(last_check):
            with gil:
                if PyErr_CheckSignals() != 0:
                    res.status = EPOCH_INTERRUPTED
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)
    return start


DEF MAX_TEAM = 64
# Column blocks of a split first layer start at multiples of this (the widest SIMD vector).
cdef Py_ssize_t COLUMN_ALIGN = 16

cdef struct TeamBoard:
    # What the threads of a team tell each other at the two barriers of a step.
    double loss[MAX_TEAM]          # each thread's sum of row losses
    Py_ssize_t correct[MAX_TEAM]   # each thread's rows predicted right
    int finite[MAX_TEAM]           # whether each thread's weight updates stayed finite
    int inputs_finite[MAX_TEAM]    # whether the input rows each thread gathered were finite
                                   # (rows and inputs teams)
    int stop                       # set by thread 0: an EPOCH_* status to stop with, or -1


cdef inline bint splits_first_layer(const Net* net, int threads) noexcept nogil:
    # Split the first layer by output columns when the workspace has room for the team, each
    # thread gets at least two vectors of columns, and the activation is elementwise (softmax
    # needs whole rows).
    return (threads <= net.team_threads and net.n_layers >= 2
            and net.acts[0] != ACT_SOFTMAX and net.sizes[1] >= 2 * COLUMN_ALIGN * threads)


cdef inline void column_block(Py_ssize_t width, int rank, int size, Py_ssize_t* j0,
                              Py_ssize_t* j1) noexcept nogil:
    # Whole vectors to each thread, so no thread's panels end in a partial vector but the last.
    cdef Py_ssize_t v0, v1
    block_of((width + COLUMN_ALIGN - 1) // COLUMN_ALIGN, rank, size, &v0, &v1)
    j0[0] = min(v0 * COLUMN_ALIGN, width)
    j1[0] = min(v1 * COLUMN_ALIGN, width)


cdef inline float* workspace(const Net* net) noexcept nogil:
    # After the activation gradients; its layout is buffer_sizes' (reference.py).
    return grad_region(net, net.n_layers)


cdef inline float* thread_area(const Net* net, int rank) noexcept nogil:
    # Thread rank >= 1's input rows, then its params copy, then its grads copy.
    cdef Py_ssize_t C0 = net.sizes[0], H = net.sizes[1]
    return (workspace(net) + 2 * C0 * H
            + (rank - 1) * (net.rows * C0 + 2 * net_n_params(net)))


cdef void copy_columns(float* dst, Py_ssize_t ld_dst, const float* src, Py_ssize_t ld_src,
                       Py_ssize_t rows, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * ld_dst, src + r * ld_src, width * sizeof(float))


cdef void first_layer_columns_forward(const Net* net, const float* inp, const float* w,
                                      Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Columns j0..j1 of the first layer's output for the n rows inp, activation applied,
    from w: those columns of its weights as a contiguous (sizes[0], j1 - j0) block."""
    cdef Py_ssize_t r, C = net.sizes[0], H = net.sizes[1], width = j1 - j0
    cdef float* h = net_acts(net, 1) + j0
    mn_sgemm_strided(h, H, inp, C, 1, w, width, net.params + C * H + j0, n, C, width)
    for r in range(n):
        activation_forward(net.acts[0], h + r * H, 1, width)


cdef bint first_layer_columns_update(const Net* net, const float* inp, float* w, float* g,
                                     Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1,
                                     float learning_rate) noexcept nogil:
    """Gradient g and SGD update of w, the contiguous (sizes[0], j1 - j0) copy of columns
    j0..j1 of the first layer's weights, and of those columns of its bias (in place), for
    the n input rows inp. Returns whether every updated value stayed finite."""
    cdef Py_ssize_t C = net.sizes[0], H = net.sizes[1], width = j1 - j0
    cdef float* bias = net.params + C * H
    cdef float* dbias = net.grads + C * H
    cdef const float* dz = grad_region(net, 0)
    cdef bint finite = mn_sgemm_sgd(g, width, inp, 1, C, dz + j0, H, w, width, learning_rate,
                                    C, n, width)
    mn_column_sums_block(dbias, dz, j0, j1, n, H)
    return finite & sgd_update(bias + j0, dbias + j0, learning_rate, width)


cdef bint row_blocks_update(const Net* net, Py_ssize_t first, int rank, int size,
                            Py_ssize_t n, float learning_rate) noexcept nogil:
    """This thread's block of weight-gradient rows of layers first.., and the biases of the
    layers l with l % size == rank: computed, then applied. With size 1, all of them.
    Returns whether every updated value stayed finite."""
    cdef Py_ssize_t l, c0, c1
    cdef bint finite = True
    for l in range(first, net.n_layers):
        if l == 0 and net.w0t != NULL:
            column_block(net.sizes[0], rank, size, &c0, &c1)  # columns of w0t's rows
        else:
            block_of(net.sizes[l], rank, size, &c0, &c1)
        finite &= weight_grads_sgd_rows(net, l, c0, c1, n, l % size == rank, learning_rate)
    return finite


cdef inline void board_totals(const TeamBoard* board, int size, double* total,
                              Py_ssize_t* correct) noexcept nogil:
    cdef int i
    total[0] = 0
    correct[0] = 0
    for i in range(size):
        total[0] += board.loss[i]
        correct[0] += board.correct[i]


cdef inline bint board_all_finite(const TeamBoard* board, int size) noexcept nogil:
    cdef int i
    for i in range(size):
        if not board.finite[i]:
            return False
    return True


cdef inline bint board_inputs_finite(const TeamBoard* board, int size) noexcept nogil:
    # Whether every thread's gathered input rows were finite (read after the barrier that
    # follows the gathers, and before the next gathers).
    cdef int i
    for i in range(size):
        if not board.inputs_finite[i]:
            return False
    return True


cdef inline bint loss_stops_team(const TeamBoard* board, EpochResult* res, int rank,
                                 bint inputs_finite, double total) noexcept nogil:
    # After the barrier that follows the forward pass: stop (before any update) on Ctrl-C, a
    # non-finite input or a non-finite loss. Every thread sees the same values, so all stop
    # together.
    if board.stop < 0 and inputs_finite and isfinite(total):
        return False
    if rank == 0 and board.stop < 0:
        res.status = EPOCH_NONFINITE_LOSS if inputs_finite else EPOCH_NONFINITE_INPUT
    return True


cdef inline bint update_stops_team(const TeamBoard* board, EpochResult* res, int rank,
                                   int size) noexcept nogil:
    # After the barrier that follows the updates: stop if some thread's update went
    # non-finite (those weights kept their values).
    if board_all_finite(board, size):
        return False
    if rank == 0:
        res.status = EPOCH_NONFINITE_LOSS
    return True


cdef inline void after_step(TeamBoard* board, EpochResult* res, double total,
                            Py_ssize_t correct, Py_ssize_t n, double* last_check) noexcept nogil:
    # Thread 0, once a step is complete: count it, and now and then look for Ctrl-C (the
    # others see board.stop after the step's next barrier).
    count_step(res, total, correct, n)
    if time_to_check_signals(last_check):
        with gil:
            if PyErr_CheckSignals() != 0:
                board.stop = EPOCH_INTERRUPTED


cdef inline void finish_team(const TeamBoard* board, EpochResult* res, Py_ssize_t start,
                             Py_ssize_t* next_start) noexcept nogil:
    # Thread 0, after the loop.
    if board.stop >= 0:
        res.status = board.stop
    next_start[0] = start


cdef void rows_team_member(const Net* net, const float* x, const float* y,
                           const long long* perm, Py_ssize_t start, Py_ssize_t end,
                           Py_ssize_t N, Py_ssize_t batch_size, float learning_rate,
                           TeamBoard* board, EpochResult* res, double* last_check,
                           Py_ssize_t* next_start) noexcept nogil:
    """One thread of a team running the batches starting at rows start.. < end, split by
    rows. Each thread gathers, forwards and back-propagates its own block of the batch's rows
    (rows are independent), then, after a barrier, computes and applies its own block of
    every layer's weight-gradient rows (and whole biases, layer l on thread l % size). Each
    element is computed by the same operations as on one thread, so the weights are the same
    bits. Two barriers a step; thread 0 keeps the counts and looks for Ctrl-C."""
    cdef int rank = mn_team_rank(), size = mn_team_size()
    cdef Py_ssize_t L = net.n_layers, C0 = net.sizes[0], OC = net.sizes[L]
    cdef Py_ssize_t n, r0, r1, nr, c0, c1, correct
    cdef float* targets = net_acts(net, L + 1)
    cdef double total
    cdef bint finite
    mn_set_thread_cap(1)
    while start < end:
        n = batch_size if N - start > batch_size else N - start
        block_of(n, rank, size, &r0, &r1)
        nr = r1 - r0
        board.loss[rank] = 0
        board.correct[rank] = 0
        board.inputs_finite[rank] = True
        if nr > 0:
            board.inputs_finite[rank] = gather_inputs(net.a + r0 * C0, x, perm + start + r0, nr,
                                                      C0, 0, C0)
            gather_rows(targets + r0 * OC, y, perm + start + r0, nr, OC)
            if start + n < N:
                block_of(min(batch_size, N - start - n), rank, size, &c0, &c1)
                mn_prefetch_rows_later(x, perm + start + n + c0, c1 - c0, C0)
            forward_rows(net, 0, net.a + r0 * C0, net_acts(net, L) + r0 * OC, r0, nr)
            board.loss[rank] = loss_forward(net.loss, net_acts(net, L) + r0 * OC,
                                            targets + r0 * OC, nr, OC) * nr
            board.correct[rank] = count_correct(net_acts(net, L) + r0 * OC,
                                                targets + r0 * OC, nr, OC)
            deltas_rows(net, targets, r0, r1, n)
        mn_team_barrier()
        board_totals(board, size, &total, &correct)
        if loss_stops_team(board, res, rank, board_inputs_finite(board, size), total):
            break
        board.finite[rank] = row_blocks_update(net, 0, rank, size, n, learning_rate)
        mn_prefetch_flush()
        mn_team_barrier()
        if update_stops_team(board, res, rank, size):
            break
        start += n
        if rank == 0:
            after_step(board, res, total, correct, n, last_check)
    if rank == 0:
        finish_team(board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef void columns_team_member(const Net* net, const float* x, const float* y,
                              const long long* perm, Py_ssize_t start, Py_ssize_t end,
                              Py_ssize_t N, Py_ssize_t batch_size, float learning_rate,
                              TeamBoard* board, EpochResult* res, double* last_check,
                              Py_ssize_t* next_start) noexcept nogil:
    """One thread of a team running the batches starting at rows start.. < end, with the
    first layer split by output columns (splits_first_layer).

    Moving data between cores is what costs here, so each thread keeps its own copies:
    - its columns of the first layer's weights and gradient, as contiguous blocks (a column
      block of a shared row-major matrix interleaves the threads' cache lines, and the
      prefetchers then pull each other's lines back and forth: the update ran 2.5x slower);
    - all the batch's input rows (it gathers them itself);
    - the other layers' weights, which every thread updates alike from the whole batch
      (thread 0 in place; the others in their areas of the workspace).
    What crosses between cores is the first layer's output and the deltas: each thread
    computes its columns of the first layer for all rows, then (barrier) the other layers
    forward and back for its block of rows, then (barrier) its updates, then gathers the next
    batch (barrier). Each element is computed by the same operations as on one thread, so
    the weights are the same bits."""
    cdef int rank = mn_team_rank(), size = mn_team_size()
    cdef Py_ssize_t L = net.n_layers, C0 = net.sizes[0], H = net.sizes[1], OC = net.sizes[L]
    cdef Py_ssize_t n, r0, r1, nr, j0, j1, width, upper, correct
    cdef float* targets = net_acts(net, L + 1)
    cdef double total
    cdef Net mine = net[0]
    cdef float* inp = net.a
    column_block(H, rank, size, &j0, &j1)
    width = j1 - j0
    cdef float* w0 = workspace(net) + C0 * j0
    cdef float* g0 = workspace(net) + C0 * H + C0 * j0
    copy_columns(w0, width, net.params + j0, H, C0, width)
    if rank > 0:
        inp = thread_area(net, rank)
        mine.params = inp + net.rows * C0
        mine.grads = mine.params + net_n_params(net)
        upper = param_offset(net, 1)  # the first layer's weights are in w0
        memcpy(mine.params + upper, net.params + upper,
               (net_n_params(net) - upper) * sizeof(float))
    mn_set_thread_cap(1)
    # Every thread gathers every input row, so each knows itself whether they are finite
    # (a flag on the board could already hold the next batch's when another thread reads it).
    cdef bint inputs_finite = True
    if start < end:
        inputs_finite = gather_batch(net, inp, x, y, perm, start, N, batch_size, rank, size)
    mn_team_barrier()  # every copy is made before thread 0 updates net.params
    while start < end:
        n = batch_size if N - start > batch_size else N - start
        block_of(n, rank, size, &r0, &r1)
        nr = r1 - r0
        first_layer_columns_forward(net, inp, w0, n, j0, j1)
        board.loss[rank] = 0
        board.correct[rank] = 0
        mn_team_barrier()  # the whole first-layer output is there
        if nr > 0:
            forward_rows(&mine, 1, net_acts(net, 1) + r0 * H, net_acts(net, L) + r0 * OC,
                         r0, nr)
            board.loss[rank] = loss_forward(net.loss, net_acts(net, L) + r0 * OC,
                                            targets + r0 * OC, nr, OC) * nr
            board.correct[rank] = count_correct(net_acts(net, L) + r0 * OC,
                                                targets + r0 * OC, nr, OC)
            deltas_rows(&mine, targets, r0, r1, n)
        mn_team_barrier()  # every row's deltas are there
        board_totals(board, size, &total, &correct)
        if loss_stops_team(board, res, rank, inputs_finite, total):
            break
        board.finite[rank] = (
            first_layer_columns_update(net, inp, w0, g0, n, j0, j1, learning_rate)
            & row_blocks_update(&mine, 1, 0, 1, n, learning_rate))
        mn_prefetch_flush()
        if start + n < end:
            inputs_finite = gather_batch(net, inp, x, y, perm, start + n, N, batch_size,
                                         rank, size)
        mn_team_barrier()  # updates done; nobody reads this step's buffers any more
        if update_stops_team(board, res, rank, size):
            break
        start += n
        if rank == 0:
            after_step(board, res, total, correct, n, last_check)
    # The weights of the last completed step (and its gradient) back into net.params.
    copy_columns(net.params + j0, H, w0, width, C0, width)
    copy_columns(net.grads + j0, H, g0, width, C0, width)
    if rank == 0:
        finish_team(board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef inline bint splits_inputs(const Net* net, int threads) noexcept nogil:
    # A one-layer net that trains transposed, with inputs wide enough for two pieces and a
    # workspace with room for the second thread's area (inputs_team_member's layout).
    cdef Py_ssize_t C0 = net.sizes[0], OC = net.sizes[1], rows = net.rows
    return (threads >= 2 and net.team_threads >= 2 and net.n_layers == 1
            and net.w0t != NULL and C0 >= 4 * COLUMN_ALIGN
            and rows * (C0 - narrow_split(net) + 5 * OC) + 2 * OC
                <= rows * C0 + 2 * net_n_params(net))


cdef void inputs_team_member(const Net* net, const float* x, const float* y,
                             const long long* perm, Py_ssize_t start, Py_ssize_t end,
                             Py_ssize_t N, Py_ssize_t batch_size, float learning_rate,
                             TeamBoard* board, EpochResult* res, double* last_check,
                             Py_ssize_t* next_start) noexcept nogil:
    """One of the two threads of a team running the batches starting at rows start.. < end
    of a one-layer net that trains transposed (splits_inputs), each thread with one piece of
    the inputs (narrow_split), the perceptron's case.

    Each thread gathers only its piece of the batch's input rows (so every input byte crosses
    from memory to one core only), computes its piece's dot products, and after a barrier
    adds both pieces (as transposed_first_layer_forward does), then computes the loss and the
    deltas of the whole batch itself (a few hundred floats), and the gradient and update of
    its own columns of w0t from its own rows. The bias is updated by both, thread 0 in
    params, thread 1 in a copy. Only the pieces' sums cross between cores. Two barriers a
    step; the same bits as one thread."""
    cdef int rank = mn_team_rank()
    cdef Py_ssize_t C0 = net.sizes[0], OC = net.sizes[1], rows = net.rows
    cdef Py_ssize_t split = narrow_split(net), n, correct = 0
    cdef Py_ssize_t k0 = 0 if rank == 0 else split, k1 = split if rank == 0 else C0
    cdef Py_ssize_t width = k1 - k0
    # Thread 1's area: its inputs piece, both threads' piece sums, then its own targets,
    # outputs, deltas, bias and bias gradient.
    cdef float* area = thread_area(net, 1)
    cdef float* sums0 = area + rows * (C0 - split)
    cdef float* sums1 = sums0 + rows * OC
    cdef float* inp = net.a if rank == 0 else area
    cdef float* targets = net_acts(net, 2) if rank == 0 else sums1 + rows * OC
    cdef float* out = net_acts(net, 1) if rank == 0 else targets + rows * OC
    cdef float* dz = grad_region(net, 0) if rank == 0 else out + rows * OC
    cdef float* bias = net.params + C0 * OC if rank == 0 else dz + rows * OC
    cdef float* dbias = net.grads + C0 * OC if rank == 0 else bias + OC
    cdef float* my_sums = sums0 if rank == 0 else sums1
    cdef double total
    if mn_team_size() < 2:  # OpenMP gave one thread: the same steps, serially
        next_start[0] = serial_stretch(net, x, y, perm, start, end, N, batch_size,
                                       learning_rate, res, last_check)
        return
    if rank == 1:
        memcpy(bias, net.params + C0 * OC, OC * sizeof(float))
    mn_set_thread_cap(1)
    while start < end:
        n = batch_size if N - start > batch_size else N - start
        board.inputs_finite[rank] = gather_inputs(inp, x, perm + start, n, C0, k0, k1)
        gather_rows(targets, y, perm + start, n, OC)
        if start + n < N:
            mn_prefetch_columns_later(x, C0, perm + start + n, min(batch_size, N - start - n),
                                      k0, k1)
        mn_sgemm_nt_strided(my_sums, OC, inp, width, net.w0t + k0, C0, n, width, OC)
        mn_team_barrier()  # both pieces' sums are there
        add_pieces(out, sums0, sums1, bias, n, OC)
        activation_forward(net.acts[0], out, n, OC)
        total = loss_forward(net.loss, out, targets, n, OC) * n
        if loss_stops_team(board, res, rank, board_inputs_finite(board, 2), total):
            break
        if rank == 0:
            correct = count_correct(out, targets, n, OC)
        output_deltas(net, dz, out, targets, n, n)
        mn_column_sums(dbias, dz, n, OC)
        board.finite[rank] = (
            mn_sgemm_sgd(net.g0t + k0, C0, dz, 1, OC, inp, width, net.w0t + k0, C0,
                         learning_rate, OC, n, width)
            & sgd_update(bias, dbias, learning_rate, OC))
        mn_prefetch_flush()
        mn_team_barrier()  # updates done; nobody reads this step's sums any more
        if update_stops_team(board, res, rank, 2):
            break
        start += n
        if rank == 0:
            after_step(board, res, total, correct, n, last_check)
    if rank == 0:
        finish_team(board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef bint gather_batch(const Net* net, float* inp, const float* x,
                       const float* y, const long long* perm, Py_ssize_t start, Py_ssize_t N,
                       Py_ssize_t batch_size, int rank, int size) noexcept nogil:
    """For the column team: all input rows of the batch starting at start into this
    thread's inp, its block of target rows into the shared targets, and a prefetch of the
    next batch's input rows. Returns whether the input rows are all finite."""
    cdef Py_ssize_t L = net.n_layers, C0 = net.sizes[0], OC = net.sizes[L], r0, r1
    cdef Py_ssize_t n = batch_size if N - start > batch_size else N - start
    block_of(n, rank, size, &r0, &r1)
    cdef bint finite = gather_inputs(inp, x, perm + start, n, C0, 0, C0)
    gather_rows(net_acts(net, L + 1) + r0 * OC, y, perm + start + r0, r1 - r0, OC)
    if start + n < N:
        mn_prefetch_rows_later(x, perm + start + n, min(batch_size, N - start - n), C0)
    return finite


cdef void net_predict(const Net* net, const float* x, float* out, Py_ssize_t N) noexcept nogil:
    """Forward all N rows of x, net.rows at a time. With several threads and at least a full
    chunk of rows, each thread forwards its own contiguous block of x through its own rows of
    the activation regions, with no barrier at all (rows are independent; every element gets
    the same bits as on one thread); otherwise one chunk after another, each GEMM splitting
    its rows across threads."""
    cdef int threads = min(mn_get_num_threads(), MAX_TEAM)
    cdef Py_ssize_t start = 0, n
    if threads < 2 or N < net.rows or net.rows < 2 * threads:
        while start < N:
            n = net.rows if N - start > net.rows else N - start
            net_forward(net, x + start * net.sizes[0], out + start * net.sizes[net.n_layers], n)
            start += n
        return
    with parallel(num_threads=threads):
        predict_member(net, x, out, N)


cdef void predict_member(const Net* net, const float* x, float* out,
                         Py_ssize_t N) noexcept nogil:
    """One thread of net_predict's team: rows [r0, r1) of x, net.rows // size at a time."""
    cdef int rank = mn_team_rank(), size = mn_team_size()
    cdef Py_ssize_t C0 = net.sizes[0], OC = net.sizes[net.n_layers]
    cdef Py_ssize_t sub = net.rows // size, r0, r1, n
    block_of(N, rank, size, &r0, &r1)
    mn_set_thread_cap(1)
    while r0 < r1:
        n = sub if r1 - r0 > sub else r1 - r0
        forward_rows(net, 0, x + r0 * C0, out + r0 * OC, rank * sub, n)
        r0 += n
    mn_set_thread_cap(0)


# One thread's part of a team stretch: rows_team_member, columns_team_member or
# inputs_team_member (their arguments are team_stretch's).
ctypedef void (*TeamMember)(const Net*, const float*, const float*, const long long*,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, float,
                            TeamBoard*, EpochResult*, double*, Py_ssize_t*) noexcept nogil

# The kind of team the last team stretch ran, for tests (_last_team).
cdef enum:
    TEAM_NONE = 0
    TEAM_ROWS = 1
    TEAM_COLUMNS = 2
    TEAM_INPUTS = 3
cdef int last_team = TEAM_NONE


cdef Py_ssize_t team_stretch(const Net* net, const float* x, const float* y,
                             const long long* perm, Py_ssize_t start, Py_ssize_t end,
                             Py_ssize_t N, Py_ssize_t batch_size, float learning_rate,
                             int threads, EpochResult* res, double* last_check) noexcept nogil:
    """The batches starting at rows start.. < end on a team of threads. Returns the next
    start."""
    cdef TeamBoard board
    cdef Py_ssize_t next_start = start
    cdef TeamMember member = rows_team_member
    global last_team
    board.stop = -1
    threads = min(threads, MAX_TEAM)
    last_team = TEAM_ROWS
    if splits_inputs(net, threads):
        member, threads, last_team = inputs_team_member, 2, TEAM_INPUTS
    elif splits_first_layer(net, threads):
        member, last_team = columns_team_member, TEAM_COLUMNS
    with parallel(num_threads=threads):
        # OpenMP may give fewer threads than asked for; never more.
        member(net, x, y, perm, start, end, N, batch_size, learning_rate, &board, res,
               last_check, &next_start)
    return next_start


# The epoch times PROBE_BATCHES steps on one thread and as many on the team, then runs the
# next RUN_BATCHES the faster way, and probes again: on a busy machine a team waits for
# descheduled threads at every barrier, and load comes and goes (another library's thread
# pool spinning for a while after its last call, say). The weights are the same bits either
# way.
cdef Py_ssize_t PROBE_BATCHES = 32
cdef Py_ssize_t RUN_BATCHES = 1024
# How train_epoch schedules its batches: SCHEDULE_AUTO (the probes decide), or always on one
# thread, or always on the team. Results are the same bits every way; tests force each.
cdef enum:
    SCHEDULE_AUTO = 0
    SCHEDULE_SERIAL = 1
    SCHEDULE_TEAM = 2
cdef int epoch_schedule = SCHEDULE_AUTO


cdef Py_ssize_t probed_stretch(const Net* net, const float* x, const float* y,
                               const long long* perm, Py_ssize_t start, Py_ssize_t N,
                               Py_ssize_t batch_size, float learning_rate, int threads,
                               EpochResult* res, double* last_check) noexcept nogil:
    """Probe both ways from row start, then run RUN_BATCHES more batches (or the rest of
    the epoch) the faster way. Returns the next start."""
    cdef Py_ssize_t probe = PROBE_BATCHES * batch_size
    cdef Py_ssize_t end = min(N, start + 2 * probe + RUN_BATCHES * batch_size)
    cdef double t0 = mn_seconds(), serial_time, team_time
    cdef int attempt
    start = serial_stretch(net, x, y, perm, start, min(N, start + probe), N, batch_size,
                           learning_rate, res, last_check)
    serial_time = mn_seconds() - t0
    if res.status != EPOCH_DONE or start >= N:
        return start
    # A second team probe when the first loses: one hiccup (an interrupt, the other core
    # busy for a moment) can lose a probe of a few ms, and then a thousand batches ran on one
    # thread at half speed. On a machine that is really busy, it loses twice.
    for attempt in range(2):
        t0 = mn_seconds()
        start = team_stretch(net, x, y, perm, start, min(N, start + probe), N, batch_size,
                             learning_rate, threads, res, last_check)
        team_time = mn_seconds() - t0
        if res.status != EPOCH_DONE or start >= N:
            return start
        if team_time < serial_time:
            break
    if team_time < serial_time:
        return team_stretch(net, x, y, perm, start, end, N, batch_size, learning_rate, threads,
                            res, last_check)
    return serial_stretch(net, x, y, perm, start, end, N, batch_size, learning_rate, res,
                          last_check)


cdef EpochResult train_epoch(const Net* net, const float* x, const float* y,
                             const long long* perm, Py_ssize_t N, Py_ssize_t batch_size,
                             float learning_rate) noexcept nogil:
    """Minibatch SGD over x[perm] in order, batch_size rows at a time (the last batch may be
    smaller). Stops early on a non-finite loss (before that batch's update) or when a signal
    handler raises (between two steps), so params always hold a completed step."""
    cdef EpochResult res
    res.loss_sum = 0
    res.correct = 0
    res.seen = 0
    res.batches = 0
    res.status = EPOCH_DONE
    cdef double last_check = mn_seconds()
    cdef int threads = mn_get_num_threads()
    cdef Py_ssize_t start = 0
    cdef Net t = for_training(net)
    net = &t
    if threads < 2 or batch_size < threads or epoch_schedule == SCHEDULE_SERIAL:
        serial_stretch(net, x, y, perm, 0, N, N, batch_size, learning_rate, &res, &last_check)
    elif epoch_schedule == SCHEDULE_TEAM:
        team_stretch(net, x, y, perm, 0, N, N, batch_size, learning_rate, threads, &res,
                     &last_check)
    elif batch_size < 2 * threads or N < 4 * PROBE_BATCHES * batch_size:
        serial_stretch(net, x, y, perm, 0, N, N, batch_size, learning_rate, &res, &last_check)
    else:
        while start < N and res.status == EPOCH_DONE:
            start = probed_stretch(net, x, y, perm, start, N, batch_size, learning_rate,
                                   threads, &res, &last_check)
    end_training(net)
    return res

# ============================================================================================
# Runtime configuration: SIMD path and threads (the C side's state, seen from Python)
# ============================================================================================

SIMD_PATHS = ("avx512", "avx2", "sse2", "neon", "scalar")


def simd_path() -> str:
    """Name of the GEMM instruction-set path in use."""
    return mn_simd_name().decode()


def simd_supported(name: str) -> bool:
    """True if `name` is compiled in and this CPU can run it."""
    return bool(mn_simd_supported(name.encode()))


def select_simd(name=None) -> str:
    """Use the SIMD path `name` (one of SIMD_PATHS), or the best one when name is None."""
    if name is None:
        mn_simd_select(NULL)
        return simd_path()
    if name not in SIMD_PATHS:
        raise ValueError(f"unknown SIMD path {name!r}; choose from {', '.join(SIMD_PATHS)}")
    if mn_simd_select(name.encode()) != 0:
        have = [p for p in SIMD_PATHS if simd_supported(p)]
        raise ValueError(f"SIMD path {name!r} is not available on this CPU/build; "
                         f"available: {', '.join(have)}")
    return simd_path()


def set_num_threads(int n) -> None:
    """Threads the kernels use; n <= 0 means all cores."""
    mn_set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels use (1 when built without OpenMP)."""
    return mn_get_num_threads()


_SCHEDULES = {"auto": SCHEDULE_AUTO, "serial": SCHEDULE_SERIAL, "team": SCHEDULE_TEAM}


def _set_epoch_schedule(str name) -> None:
    """Force how train_epoch runs its batches: "auto" (default: a timed probe picks),
    "serial" (one thread) or "team" (all threads). For tests and benchmarks; results are
    bit-identical every way. Process-wide: do not change it while an epoch runs."""
    global epoch_schedule
    if name not in _SCHEDULES:
        raise ValueError(f"unknown epoch schedule {name!r}; expected one of {sorted(_SCHEDULES)}")
    epoch_schedule = _SCHEDULES[name]


def _last_team() -> str:
    """How the last team stretch split its work: "rows", "columns" or "inputs" ("none"
    before any). For tests; process-wide."""
    return ("none", "rows", "columns", "inputs")[last_team]


def openmp_enabled() -> bool:
    """True if the kernels were built with OpenMP."""
    return bool(mn_openmp_enabled())


def sgemm(float[:, ::1] c, const float[:, ::1] a, const float[:, ::1] b):
    """c = a @ b with the compiled GEMM (no checks beyond shapes: for benchmarks)."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N or M * K * N == 0:
        raise ValueError("sgemm needs c (M, N) = a (M, K) @ b (K, N), all non-empty")
    with nogil:
        mn_sgemm_nn(&c[0, 0], &a[0, 0], &b[0, 0], NULL, M, K, N)
