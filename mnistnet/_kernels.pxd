# cython: language_level=3
"""C-level API of mnistnet's compiled kernels, for `cimport` from other Cython code.

    from mnistnet._kernels cimport dense_forward, relu_forward

Every buffer is a C-contiguous float32 array given by its first element; a shape comment
follows it. Arguments go outputs, inputs, weights, then sizes (llm.c's order). No function
allocates, checks shapes or takes the GIL: callers validate first (the `def` wrappers of the
same names in mnistnet._kernels do).
"""

# ---- dense layer: out = inp @ weight + bias -------------------------------------------------
cdef void dense_forward(float* out,                # OUT (B, OC)
                        const float* inp,          # IN  (B, C)
                        const float* weight,       # IN  (C, OC)
                        const float* bias,         # IN  (OC,)
                        Py_ssize_t B, Py_ssize_t C, Py_ssize_t OC) noexcept nogil
cdef void dense_backward(float* dinp,              # OUT (B, C), or NULL to skip
                         float* dweight,           # OUT (C, OC)
                         float* dbias,             # OUT (OC,), or NULL to skip
                         const float* dout,        # IN  (B, OC)
                         const float* inp,         # IN  (B, C)
                         const float* weight,      # IN  (C, OC)
                         Py_ssize_t B, Py_ssize_t C, Py_ssize_t OC) noexcept nogil

# ---- activations; backward uses the forward *output*; in place (out is inp) is allowed ------
cdef void linear_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil
cdef void linear_backward(float* dinp, const float* out, const float* dout,
                          Py_ssize_t N) noexcept nogil
cdef void sigmoid_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil
cdef void sigmoid_backward(float* dinp, const float* out, const float* dout,
                           Py_ssize_t N) noexcept nogil
cdef void relu_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil
cdef void relu_backward(float* dinp, const float* out, const float* dout,
                        Py_ssize_t N) noexcept nogil
cdef void softmax_forward(float* out,              # OUT (B, C)
                          const float* inp,        # IN  (B, C)
                          Py_ssize_t B, Py_ssize_t C) noexcept nogil
cdef void softmax_backward(float* dinp,            # OUT (B, C)
                           const float* out,       # IN  (B, C) softmax output
                           const float* dout,      # IN  (B, C)
                           Py_ssize_t B, Py_ssize_t C) noexcept nogil

# ---- losses: forward returns the batch mean; backward is d(batch mean)/d(input) -------------
cdef double mse_forward(const float* pred,         # IN (B, C)
                        const float* target,       # IN (B, C)
                        Py_ssize_t B, Py_ssize_t C) noexcept nogil
cdef void mse_backward(float* dpred,               # OUT (B, C)
                       const float* pred, const float* target,
                       Py_ssize_t B, Py_ssize_t C) noexcept nogil
cdef double crossentropy_forward(const float* probs,   # IN (B, C) rows summing to ~1
                                 const float* target,  # IN (B, C)
                                 Py_ssize_t B, Py_ssize_t C) noexcept nogil
cdef void crossentropy_softmax_backward(float* dlogits,    # OUT (B, C)
                                        const float* probs, const float* target,
                                        Py_ssize_t B, Py_ssize_t C) noexcept nogil

# ---- optimiser and metrics ------------------------------------------------------------------
# Returns False if some new value would be NaN/Inf; those elements keep their old value.
cdef bint sgd_update(float* params,                # IN/OUT (N,)
                     const float* grads,           # IN     (N,)
                     float learning_rate, Py_ssize_t N) noexcept nogil
cdef Py_ssize_t count_correct(const float* pred,   # IN (B, C)
                              const float* target, # IN (B, C)
                              Py_ssize_t B, Py_ssize_t C) noexcept nogil
# True if no element of x is NaN or Inf.
cdef bint all_finite(const float* x, Py_ssize_t N) noexcept nogil  # IN (N,)

# ---- the network: one flat parameter block, buffers owned by the caller ---------------------
cdef enum:
    ACT_LINEAR = 0
    ACT_SIGMOID = 1
    ACT_RELU = 2
    ACT_SOFTMAX = 3
    LOSS_MSE = 0
    LOSS_CE = 1

# Why train_epoch stopped.
cdef enum:
    EPOCH_DONE = 0
    EPOCH_NONFINITE_LOSS = 1     # a batch's loss was NaN/Inf; its update was not applied
    EPOCH_INTERRUPTED = 2        # a signal handler raised (Ctrl-C); the exception is set
    EPOCH_NONFINITE_INPUT = 3    # a batch's input rows held NaN/Inf; nothing of it was applied

cdef struct Net:
    Py_ssize_t n_layers
    const int* sizes        # (n_layers + 1,) widths: the input, then each layer's output
    const int* acts         # (n_layers,) activation codes
    int loss                # loss code
    float* params           # W (in, out) then b (out,) of each layer, in order
    float* grads            # same layout as params
    float* a                # regions of (rows, sizes[l]) for l = 0..n_layers, then targets
    float* d                # regions of (rows, sizes[l + 1]): d(loss)/d(layer l's output),
                            # then the workspace: n_dacts floats of buffer_sizes in all
    Py_ssize_t rows         # rows each region holds (the batch size)
    int team_threads        # threads the workspace after d has room for (see buffer_sizes)
    # Set by train_step/train_epoch themselves (a caller's values are ignored): NULL, or for
    # a narrow first layer its weights and gradient transposed, (sizes[1], sizes[0]), in the
    # workspace, used in place of params' and grads' during the call.
    float* w0t
    float* g0t

cdef struct EpochResult:
    double loss_sum         # sum over completed batches of (batch-mean loss x batch rows)
    Py_ssize_t correct      # rows whose argmax matched the target's
    Py_ssize_t seen         # rows trained on
    Py_ssize_t batches      # batches completed
    int status              # EPOCH_*

cdef Py_ssize_t net_n_params(const Net* net) noexcept nogil
cdef float* net_acts(const Net* net, Py_ssize_t l) noexcept nogil
cdef void net_forward(const Net* net,
                      const float* x,              # IN  (n, sizes[0])
                      float* out,                  # OUT (n, sizes[-1])
                      Py_ssize_t n) noexcept nogil
cdef void net_predict(const Net* net,
                      const float* x,              # IN  (N, sizes[0])
                      float* out,                  # OUT (N, sizes[-1])
                      Py_ssize_t N) noexcept nogil
cdef void net_backward(const Net* net,
                       const float* target,        # IN (n, sizes[-1])
                       Py_ssize_t n) noexcept nogil
cdef double train_step(const Net* net, Py_ssize_t n, float learning_rate) noexcept nogil
cdef EpochResult train_epoch(const Net* net,
                             const float* x,       # IN (N_x, sizes[0])
                             const float* y,       # IN (N_x, sizes[-1])
                             const long long* perm,  # IN (N,) row order, values < N_x
                             Py_ssize_t N, Py_ssize_t batch_size,
                             float learning_rate) noexcept nogil
