# cython: language_level=3
"""Compiled kernels: the layers (dense, conv2d, maxpool2d, avgpool2d, dropout, activations,
translation, batch normalisation, rescaling), losses, optimizers (SGD, momentum, Adam, AdamW, RMSprop), the network
over its layer plan, one step and the epoch loop with its thread teams.

Every kernel is a `cdef ... noexcept nogil` function over raw float32 pointers, declared in
_kernels.pxd so other Cython code can `cimport` it. The Python-facing wrappers (same names,
shape checks, `out=None`) are in mnistnet.fast, and their NumPy twins in mnistnet.reference.
The GEMMs are C (csrc/), with the SIMD path chosen at run time; this module also exposes that
path and the thread count to Python. The code is split by concept into the files included
below: _layers.pxi, _optimizers.pxi, _network.pxi, _epoch.pxi and _dense.pxi (one extension,
so calls between them cost nothing).
"""
from libc.math cimport INFINITY, expf, isfinite, logf, pow, sqrt, sqrtf, tanhf
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
    void mn_sgemm_tn(float *c, const float *a, const float *b, Py_ssize_t M, Py_ssize_t K,
                     Py_ssize_t N)
    # The same fields as Window (_kernels.pxd), checked at import.
    ctypedef struct mn_window:
        pass
    int mn_conv_inside(const mn_window *g, mn_window *inside)
    void mn_conv2d_forward(float *out, float *padded, const float *inp, const float *weight,
                           const float *bias, const mn_window *g, Py_ssize_t B, Py_ssize_t OC,
                           int relu)
    void mn_conv2d_weight_grad(float *dweight, const float *x, const float *dout,
                               const mn_window *g, Py_ssize_t B, Py_ssize_t OC, Py_ssize_t k0,
                               Py_ssize_t k1)
    double mn_fma_peak_gflops(int threads, double seconds)
    int mn_conv2d_input_grad_direct(const mn_window *g)
    void mn_conv2d_flip_kernel(float *flipped, const float *weight, const mn_window *g,
                               Py_ssize_t OC)
    void mn_conv2d_input_grad(float *dinp, float *scratch, const float *dout,
                              const float *flipped, const mn_window *g, Py_ssize_t B,
                              Py_ssize_t OC)
    void mn_bn_stats(float *mean, float *var, float *invstd, const float *x, double epsilon,
                     Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t M, Py_ssize_t C)
    void mn_bn_normalize(float *out, float *xhat, const float *x, const float *gamma,
                         const float *beta, const float *mean, const float *invstd,
                         Py_ssize_t M, Py_ssize_t C, int relu)
    void mn_bn_inference(float *out, const float *x, const float *gamma, const float *beta,
                         const float *moving_mean, const float *moving_variance,
                         double epsilon, Py_ssize_t M, Py_ssize_t C, int relu)
    void mn_bn_backward_sums(float *dgamma, float *dbeta, const float *dout, const float *x,
                             const float *shift, const float *scale, Py_ssize_t c0,
                             Py_ssize_t c1, Py_ssize_t M, Py_ssize_t C)
    void mn_bn_input_grad(float *dinp, const float *dout, const float *x, const float *shift,
                          const float *scale, const float *gamma, const float *invstd,
                          const float *dgamma, const float *dbeta, Py_ssize_t rows,
                          Py_ssize_t M, Py_ssize_t C)
    void mn_im2col(float *patches, const float *inp, const mn_window *g, Py_ssize_t B)
    void mn_col2im(float *dinp, const float *dpatches, const mn_window *g, Py_ssize_t B)
    void mn_maxpool2d_forward(float *out, int *argmax, const float *inp, const mn_window *g,
                              Py_ssize_t B)
    void mn_maxpool2d_backward(float *dinp, const float *dout, const int *argmax,
                               const float *relu_in, const mn_window *g, Py_ssize_t B)
    void mn_column_sums(float *sums, const float *x, Py_ssize_t B, Py_ssize_t C)
    void mn_column_sums_block(float *sums, const float *x, Py_ssize_t c0, Py_ssize_t c1,
                              Py_ssize_t B, Py_ssize_t C)
    int mn_all_finite(const float *x, Py_ssize_t n)
    int mn_copy_finite(float *dst, const float *src, Py_ssize_t n)
    void mn_sigmoid_forward(float *out, const float *inp, Py_ssize_t n)
    void mn_sigmoid_backward(float *dinp, const float *out, const float *dout, Py_ssize_t n)
    void mn_relu_forward(float *out, const float *inp, Py_ssize_t n)
    void mn_dropout_forward(float *out, float *mask, const float *inp, double rate,
                            unsigned long long key, Py_ssize_t first, Py_ssize_t n)
    void mn_relu_backward(float *dinp, const float *out, const float *dout, Py_ssize_t n)
    void mn_softmax_forward(float *out, const float *inp, Py_ssize_t B, Py_ssize_t C)
    void mn_prefetch_rows(const float *x, const long long *rows, Py_ssize_t n,
                          Py_ssize_t width)
    void mn_prefetch_rows_later(const float *x, const long long *rows, Py_ssize_t n,
                                Py_ssize_t width)
    void mn_prefetch_columns_later(const float *x, Py_ssize_t ld, const long long *rows,
                                   Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1)
    void mn_prefetch_bytes_later(const void *x, Py_ssize_t stride, const long long *rows,
                                 Py_ssize_t n, Py_ssize_t b0, Py_ssize_t b1)
    void mn_prefetch_flush()
    const char *mn_simd_name()
    int mn_simd_select(const char *name)
    int mn_simd_supported(const char *name)
    void mn_set_num_threads(int n)
    int mn_get_num_threads()
    int mn_available_cores()
    void mn_set_thread_cap(int n)
    int mn_team_rank()
    int mn_team_size()
    void mn_team_barrier()
    int mn_openmp_enabled()
    double mn_seconds()
    double mn_thread_seconds()

cdef extern from "mn_internal.h" nogil:
    void mn_set_thread_limit(int n)

cdef extern from "Python.h":
    int PyErr_CheckSignals()   # no `except`: train_epoch reports it as EPOCH_INTERRUPTED

cdef extern from *:
    """
    /* SplitMix64's output function of z + the golden gamma: dropout's counter-based bits. */
    static inline unsigned long long mn_mix64(unsigned long long z)
    {
        z += 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    """
    unsigned long long mn_mix64(unsigned long long z) nogil

if sizeof(Window) != sizeof(mn_window):
    raise ImportError("mnistnet._kernels: Window and mn_window differ (a build mismatch)")

# Names of the codes in _kernels.pxd, for the Python side.
ACTIVATIONS = {"linear": ACT_LINEAR, "sigmoid": ACT_SIGMOID, "relu": ACT_RELU,
               "softmax": ACT_SOFTMAX, "tanh": ACT_TANH}
LOSSES = {"mse": LOSS_MSE, "categorical_crossentropy": LOSS_CE}
OPTIMIZERS = {"sgd": OPT_SGD, "momentum": OPT_MOMENTUM, "adam": OPT_ADAM, "adamw": OPT_ADAMW,
              "rmsprop": OPT_RMSPROP}

# Keras' clip for cross-entropy: probabilities are kept in [EPS, 1 - EPS] before the log.
cdef float CE_EPSILON = 1e-7
# How often (seconds) the epoch loop takes the GIL to look for Ctrl-C.
cdef double SIGNAL_CHECK_INTERVAL = 0.002

# ---- blocks of work for threads ----------------------------------------------------------------

DEF MAX_TEAM = 64
# Column blocks of a split layer start at multiples of this (the widest SIMD vector).
cdef Py_ssize_t COLUMN_ALIGN = 16


cdef inline void block_of(Py_ssize_t n, int rank, int size, Py_ssize_t* r0,
                          Py_ssize_t* r1) noexcept nogil:
    # Contiguous blocks whose sizes differ by at most one.
    cdef Py_ssize_t base = n // size, extra = n % size
    r0[0] = rank * base + (rank if rank < extra else extra)
    r1[0] = r0[0] + base + (1 if rank < extra else 0)


cdef inline void column_block(Py_ssize_t width, int rank, int size, Py_ssize_t* j0,
                              Py_ssize_t* j1) noexcept nogil:
    # Whole vectors to each thread, so no thread's panels end in a partial vector but the last.
    cdef Py_ssize_t v0, v1
    block_of((width + COLUMN_ALIGN - 1) // COLUMN_ALIGN, rank, size, &v0, &v1)
    j0[0] = min(v0 * COLUMN_ALIGN, width)
    j1[0] = min(v1 * COLUMN_ALIGN, width)


def compiled_kinds():
    """{"KIND_DENSE": 0, ...}: the LayerKind enum, for checking it against mnistnet.kinds."""
    return {kind.name: int(kind) for kind in LayerKind}


def optimizer_layout():
    """(field names, byte offsets, struct size) of the OptimizerSettings struct, for checking
    that mnistnet.codes.OPTIMIZER_DTYPE lays out the same bytes."""
    cdef OptimizerSettings o
    cdef char* base = <char*>&o
    names = ("code", "momentum", "nesterov", "beta_1", "beta_2", "epsilon", "rho", "centered",
             "weight_decay", "use_ema", "ema_momentum", "ema_overwrite_frequency", "ema_slot")
    offsets = (<char*>&o.code - base, <char*>&o.momentum - base, <char*>&o.nesterov - base,
               <char*>&o.beta_1 - base, <char*>&o.beta_2 - base, <char*>&o.epsilon - base,
               <char*>&o.rho - base, <char*>&o.centered - base, <char*>&o.weight_decay - base,
               <char*>&o.use_ema - base, <char*>&o.ema_momentum - base,
               <char*>&o.ema_overwrite_frequency - base, <char*>&o.ema_slot - base)
    return names, offsets, sizeof(OptimizerSettings)


def plan_layout():
    """(field names, byte offsets, struct size) of the LayerPlan struct, for checking that
    mnistnet.plan.PLAN_DTYPE lays out the same bytes."""
    cdef LayerPlan p
    cdef char* base = <char*>&p
    names = ("kind", "act", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w",
             "s_h", "s_w", "pad_top", "pad_left", "n_in", "n_out", "gemm_rows", "fan_in",
             "param", "n_param", "act_in", "act_out", "scratch", "n_scratch", "dact_in",
             "dact_out", "wt", "n_train", "stats", "shift_h0", "shift_h1", "shift_w0",
             "shift_w1", "rate", "l2", "fill", "momentum", "epsilon", "scale", "offset")
    offsets = (<char*>&p.kind - base, <char*>&p.act - base, <char*>&p.in_h - base,
               <char*>&p.in_w - base, <char*>&p.in_c - base, <char*>&p.out_h - base,
               <char*>&p.out_w - base, <char*>&p.out_c - base, <char*>&p.k_h - base,
               <char*>&p.k_w - base, <char*>&p.s_h - base, <char*>&p.s_w - base,
               <char*>&p.pad_top - base, <char*>&p.pad_left - base, <char*>&p.n_in - base,
               <char*>&p.n_out - base, <char*>&p.gemm_rows - base, <char*>&p.fan_in - base,
               <char*>&p.param - base, <char*>&p.n_param - base, <char*>&p.act_in - base,
               <char*>&p.act_out - base, <char*>&p.scratch - base, <char*>&p.n_scratch - base,
               <char*>&p.dact_in - base, <char*>&p.dact_out - base, <char*>&p.wt - base,
               <char*>&p.n_train - base, <char*>&p.stats - base, <char*>&p.shift_h0 - base,
               <char*>&p.shift_h1 - base, <char*>&p.shift_w0 - base,
               <char*>&p.shift_w1 - base, <char*>&p.rate - base, <char*>&p.l2 - base,
               <char*>&p.fill - base, <char*>&p.momentum - base, <char*>&p.epsilon - base,
               <char*>&p.scale - base, <char*>&p.offset - base)
    return names, offsets, sizeof(LayerPlan)


include "_layers.pxi"
include "_optimizers.pxi"
include "_network.pxi"
include "_epoch.pxi"
include "_dense.pxi"

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
    """Threads the kernels use; n <= 0 means OpenMP's own setting (see get_num_threads)."""
    mn_set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels called from this thread would use now: set_num_threads' n, else
    omp_get_max_threads(), clamped to available_cores() (1 when built without OpenMP)."""
    return mn_get_num_threads()


def available_cores() -> int:
    """Cores this process may run on (1 when built without OpenMP): the clamp of
    get_num_threads."""
    return mn_available_cores()


def _set_thread_limit(int n) -> None:
    """For tests: let get_num_threads give up to n threads (at most MAX_TEAM), more than the
    cores, so that teams larger than the machine can be checked for the bits of one thread;
    0 puts the clamp back at the cores. Process-wide."""
    mn_set_thread_limit(n)


_SCHEDULES = {"auto": SCHEDULE_AUTO, "serial": SCHEDULE_SERIAL, "team": SCHEDULE_TEAM,
              "probes": SCHEDULE_PROBES}


def _set_epoch_schedule(str name) -> None:
    """Force how train_epoch runs its batches: "auto" (default: a timed probe picks),
    "serial" (one thread), "team" (all threads) or "probes" (nothing but the timed probes,
    one-thread then team, back to back, even in short epochs). For tests and benchmarks;
    results are bit-identical every way. Process-wide: do not change it while an epoch
    runs."""
    global epoch_schedule
    if name not in _SCHEDULES:
        raise ValueError(f"unknown epoch schedule {name!r}; expected one of {sorted(_SCHEDULES)}")
    epoch_schedule = _SCHEDULES[name]


def _last_team(bint reset=False) -> str:
    """How the last team stretch split its work: "rows", "columns" or "inputs" ("none"
    before any, or since a reset). For tests; process-wide."""
    global last_team
    name = ("none", "rows", "columns", "inputs")[last_team]
    if reset:
        last_team = TEAM_NONE
    return name


def openmp_enabled() -> bool:
    """True if the kernels were built with OpenMP."""
    return bool(mn_openmp_enabled())


def fma_peak_gflops(int threads=0, double seconds=0.2) -> float:
    """GFLOP/s of a register-resident loop of the active SIMD path's multiply-adds run on
    `threads` threads at once (0: the kernels' thread count) for about `seconds`: what the
    cores can do at most, the yardstick of every GFLOP/s figure. At most the cores this
    process may run on take part; seconds lies in (0, 60]."""
    if not 0 < seconds <= 60:
        raise ValueError(f"seconds must lie in (0, 60], got {seconds}")
    if threads <= 0:
        threads = mn_get_num_threads()
    cdef double out
    with nogil:
        out = mn_fma_peak_gflops(threads, seconds)
    return out


def sgemm(float[:, ::1] c, const float[:, ::1] a, const float[:, ::1] b):
    """c = a @ b with the compiled GEMM (no checks beyond shapes: for benchmarks)."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N or M * K * N == 0:
        raise ValueError("sgemm needs c (M, N) = a (M, K) @ b (K, N), all non-empty")
    with nogil:
        mn_sgemm_nn(&c[0, 0], &a[0, 0], &b[0, 0], NULL, M, K, N)

