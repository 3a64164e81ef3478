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
cdef void tanh_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil
cdef void tanh_backward(float* dinp, const float* out, const float* dout,
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

# ---- conv2d (channels last): out = im2col(inp) @ weight + bias, computed directly ------------
# The geometry of a window sliding over (H, W, C) images: kernel or pool (KH, KW), strides,
# padding before (top, left), output (OH, OW). Built from a LayerPlan row.
cdef struct Window:
    Py_ssize_t H, W, C, OH, OW, KH, KW, SH, SW, PT, PL

cdef void im2col(float* patches,                   # OUT (B, OH*OW, KH*KW*C)
                 const float* inp,                 # IN  (B, H, W, C)
                 const Window* g, Py_ssize_t B) noexcept nogil
cdef void col2im(float* dinp,                      # OUT (B, H, W, C), overwritten
                 const float* dpatches,            # IN  (B, OH*OW, KH*KW*C)
                 const Window* g, Py_ssize_t B) noexcept nogil
# The windows read `padded` (conv2d_pads: the input padded as the layer pads) or, for a
# layer that does not pad, the input itself: either is "x" for the backward pass.
cdef bint conv2d_pads(const Window* g) noexcept nogil
cdef void conv2d_forward(float* out,               # OUT (B, OH, OW, OC)
                         float* padded,            # OUT (B, Hs, Ws, C) when conv2d_pads(g)
                         const float* inp,         # IN  (B, H, W, C)
                         const float* weight,      # IN  (KH, KW, C, OC)
                         const float* bias,        # IN  (OC,)
                         const Window* g, Py_ssize_t B, Py_ssize_t OC,
                         bint relu) noexcept nogil  # then max(out, 0) (relu_forward's rule)
cdef void conv2d_input_grad(float* dinp,           # OUT (B, H, W, C)
                            float* dpatches,       # scratch (OH*OW, KH*KW*C): one image's
                            const float* dout,     # IN  (B, OH, OW, OC)
                            const float* weight_t, # IN  (OC, KH*KW*C): the kernel transposed
                            const Window* g, Py_ssize_t B, Py_ssize_t OC) noexcept nogil
cdef void conv2d_weight_grad(float* dweight,       # OUT rows k0..k1 of (KH*KW*C, OC)
                             const float* x,       # IN  what conv2d_forward read
                             const float* dout,    # IN  (B, OH, OW, OC)
                             const Window* g, Py_ssize_t B, Py_ssize_t OC, Py_ssize_t k0,
                             Py_ssize_t k1) noexcept nogil
cdef void conv2d_backward(float* dinp,             # OUT (B, H, W, C), or NULL to skip
                          float* dweight,          # OUT (KH, KW, C, OC)
                          float* dbias,            # OUT (OC,)
                          float* scratch,          # (OC*KH*KW*C + OH*OW*KH*KW*C) floats
                          const float* dout,       # IN  (B, OH, OW, OC)
                          const float* x,          # IN  what conv2d_forward read
                          const float* weight,     # IN  (KH, KW, C, OC)
                          const Window* g, Py_ssize_t B, Py_ssize_t OC) noexcept nogil

# ---- maxpool2d: the max of each window and where it is -----------------------------------
cdef void maxpool2d_forward(float* out,            # OUT (B, OH, OW, C)
                            int* argmax,           # OUT (B, OH, OW, C) index into an image
                            const float* inp,      # IN  (B, H, W, C)
                            const Window* g, Py_ssize_t B) noexcept nogil
# relu_in: NULL, or the pool's input when it is a relu's output: its backward applied too.
cdef void maxpool2d_backward(float* dinp,          # OUT (B, H, W, C), overwritten
                             const float* dout,    # IN  (B, OH, OW, C)
                             const int* argmax,    # IN  from maxpool2d_forward
                             const float* relu_in,  # IN (B, H, W, C) or NULL
                             const Window* g, Py_ssize_t B) noexcept nogil

# ---- avgpool2d: the mean of each window's cells inside the image --------------------------
cdef void avgpool2d_forward(float* out,            # OUT (B, OH, OW, C)
                            const float* inp,      # IN  (B, H, W, C)
                            const Window* g, Py_ssize_t B) noexcept nogil
cdef void avgpool2d_backward(float* dinp,          # OUT (B, H, W, C), overwritten
                             const float* dout,    # IN  (B, OH, OW, C)
                             const Window* g, Py_ssize_t B) noexcept nogil

# ---- dropout: out = inp * mask, mask 0 or 1 / (1 - rate) from counter-based bits ---------
cdef unsigned long long dropout_key(unsigned long long seed, long long epoch, long long step,
                                    long long layer) noexcept nogil
# Elements first..first+N of a batch (the counter), so a row block gives the same mask.
cdef void dropout_forward(float* out,              # OUT (N,)
                          float* mask,             # OUT (N,)
                          const float* inp,        # IN  (N,)
                          double rate, unsigned long long key, Py_ssize_t first,
                          Py_ssize_t N) noexcept nogil
cdef void dropout_backward(float* dinp,            # OUT (N,)
                           const float* dout,      # IN  (N,)
                           const float* mask,      # IN  (N,)
                           Py_ssize_t N) noexcept nogil

# ---- translate (RandomTranslation): whole-pixel shifts of each image ----------------------
# out[b, h, w] = inp[b, h - dy[b], w - dx[b]], fill outside; backward the adjoint.
cdef void translate_forward(float* out,            # OUT (B, H, W, C)
                            const float* inp,      # IN  (B, H, W, C)
                            const long long* dy, const long long* dx,   # IN (B,) each
                            float fill, Py_ssize_t B, Py_ssize_t H, Py_ssize_t W,
                            Py_ssize_t C) noexcept nogil
cdef void translate_backward(float* dinp,          # OUT (B, H, W, C)
                             const float* dout,    # IN  (B, H, W, C)
                             const long long* dy, const long long* dx,
                             Py_ssize_t B, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t C) noexcept nogil
# Images first..first+B of a batch: dy in [h0, h1], dx in [w0, w1] from the counter-based bits.
cdef void translate_shifts(long long* dy, long long* dx,   # OUT (B,) each
                           unsigned long long key, Py_ssize_t first, Py_ssize_t B,
                           Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0,
                           Py_ssize_t w1) noexcept nogil

# ---- rescaling (Keras' Rescaling): out = inp * scale + offset, in double, rounded once ------
# (so uint8 pixels through scale 1/255 are exactly float32(p) / 255); out may be inp.
cdef void rescaling_forward(float* out,            # OUT (N,)
                            const float* inp,      # IN  (N,)
                            double scale, double offset, Py_ssize_t N) noexcept nogil
cdef void rescaling_backward(float* dinp,          # OUT (N,): dout * scale
                             const float* dout,    # IN  (N,)
                             double scale, Py_ssize_t N) noexcept nogil
# uint8 pixels as floats: out[i] = values[pixels[i]] (values: e.g. a Rescaling's outputs for
# the 256 pixel values).
cdef void pixels_as_floats(float* out,             # OUT (N,)
                           const unsigned char* pixels,   # IN (N,)
                           const float* values,    # IN  (256,)
                           Py_ssize_t N) noexcept nogil
# The same as products, out[i] = p * hi + p * lo (p = pixels[i]; hi of 16 significant bits,
# so p * hi is exact): vectorised, for the scales where it gives their table (checked).
cdef void pixels_scaled(float* out,                # OUT (N,)
                        const unsigned char* pixels,      # IN (N,)
                        float hi, float lo, Py_ssize_t N) noexcept nogil

# ---- batchnorm over M rows of C channels ------------------------------------------------
# Channels c0..c1 of the batch statistics: mean, var (biased), invstd = 1 / sqrt(var + eps).
cdef void batchnorm_stats(float* mean, float* var, float* invstd,   # OUT (C,), c0..c1
                          const float* inp,        # IN (M, C)
                          double epsilon, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t M,
                          Py_ssize_t C) noexcept nogil
# out = gamma * xhat + beta (then relu if asked), xhat = (inp - mean) * invstd stored unless
# xhat is NULL (the backward recomputes it from inp).
cdef void batchnorm_normalize(float* out, float* xhat,   # OUT (M, C) each; xhat may be NULL
                              const float* inp,    # IN (M, C)
                              const float* gamma, const float* beta,
                              const float* mean, const float* invstd,   # IN (C,) each
                              Py_ssize_t M, Py_ssize_t C, bint relu) noexcept nogil
cdef void batchnorm_inference(float* out,          # OUT (M, C)
                              const float* inp,    # IN (M, C)
                              const float* gamma, const float* beta,
                              const float* moving_mean, const float* moving_variance,
                              double epsilon, Py_ssize_t M, Py_ssize_t C,
                              bint relu) noexcept nogil
# The backward reads the forward's xhat as (x - shift) * scale per channel: the forward's
# input with its mean and invstd (the same bits), or a stored xhat with shift 0, scale 1.
# Channels c0..c1: dgamma = sum(dout * xhat), dbeta = sum(dout) over the M rows.
cdef void batchnorm_backward_sums(float* dgamma, float* dbeta,   # OUT (C,), c0..c1
                                  const float* dout, const float* x,   # IN (M, C)
                                  const float* shift, const float* scale,   # IN (C,) each
                                  Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t M,
                                  Py_ssize_t C) noexcept nogil
# Rows of dinp from the sums of the whole batch of M rows: rows (of the M) at a time.
cdef void batchnorm_input_grad(float* dinp,        # OUT (rows, C)
                               const float* dout, const float* x,   # IN (rows, C)
                               const float* shift, const float* scale,   # IN (C,) each
                               const float* gamma, const float* invstd,
                               const float* dgamma, const float* dbeta,   # IN (C,) each
                               Py_ssize_t rows, Py_ssize_t M, Py_ssize_t C) noexcept nogil

# ---- optimizers and metrics -----------------------------------------------------------------
# Each returns False if some new value would be NaN/Inf; those elements keep their old value.
cdef bint sgd_update(float* params,                # IN/OUT (N,)
                     const float* grads,           # IN     (N,)
                     float learning_rate, Py_ssize_t N) noexcept nogil
cdef bint momentum_update(float* params,           # IN/OUT (N,)
                          const float* grads,      # IN     (N,)
                          float* velocity,         # IN/OUT (N,)
                          float learning_rate, float momentum, bint nesterov,
                          Py_ssize_t N) noexcept nogil
cdef bint adamw_update(float* params,              # IN/OUT (N,)
                       const float* grads,         # IN     (N,)
                       float* m, float* v,         # IN/OUT (N,) each
                       float learning_rate, double beta_1, double beta_2, float epsilon,
                       long long step, float weight_decay, Py_ssize_t N) noexcept nogil
cdef bint rmsprop_update(float* params,            # IN/OUT (N,)
                         const float* grads,       # IN     (N,)
                         float* velocity,          # IN/OUT (N,)
                         float* average,           # IN/OUT (N,), or NULL (not centered)
                         float* moment,            # IN/OUT (N,), or NULL (no momentum)
                         float learning_rate, float rho, float momentum, float epsilon,
                         Py_ssize_t N) noexcept nogil
cdef bint adam_update(float* params,               # IN/OUT (N,)
                      const float* grads,          # IN     (N,)
                      float* m, float* v,          # IN/OUT (N,) each
                      float learning_rate, double beta_1, double beta_2, float epsilon,
                      long long step,              # from 1
                      Py_ssize_t N) noexcept nogil
cdef Py_ssize_t count_correct(const float* pred,   # IN (B, C)
                              const float* target, # IN (B, C)
                              Py_ssize_t B, Py_ssize_t C) noexcept nogil
# True if no element of x is NaN or Inf.
cdef bint all_finite(const float* x, Py_ssize_t N) noexcept nogil  # IN (N,)

# ---- the network: a layer plan over buffers owned by the caller ------------------------------
# The codes of mnistnet.codes (activations, losses, optimizers), checked at import.
cdef enum:
    ACT_LINEAR = 0
    ACT_SIGMOID = 1
    ACT_RELU = 2
    ACT_SOFTMAX = 3
    ACT_TANH = 4
    LOSS_MSE = 0
    LOSS_CE = 1
    OPT_SGD = 0
    OPT_MOMENTUM = 1
    OPT_ADAM = 2
    OPT_ADAMW = 3
    OPT_RMSPROP = 4

# The layer kinds: KIND_<class name> = its place in mnistnet.kinds.KINDS (checked at import;
# cpdef: Python sees the enum as _kernels.LayerKind).
cpdef enum LayerKind:
    KIND_DENSE = 0
    KIND_CONV2D = 1
    KIND_MAXPOOL2D = 2
    KIND_FLATTEN = 3
    KIND_DROPOUT = 4
    KIND_ACTIVATION = 5
    KIND_RANDOMTRANSLATION = 6
    KIND_BATCHNORMALIZATION = 7
    KIND_AVERAGEPOOLING2D = 8
    KIND_GLOBALAVERAGEPOOLING2D = 9
    KIND_RESCALING = 10

# Why train_epoch stopped.
cdef enum:
    EPOCH_DONE = 0
    EPOCH_NONFINITE_LOSS = 1     # a batch's loss was NaN/Inf; its update was not applied
    EPOCH_INTERRUPTED = 2        # a signal handler raised (Ctrl-C); the exception is set
    EPOCH_NONFINITE_INPUT = 3    # a batch's input rows held NaN/Inf; nothing of it was applied

# One layer of the plan (mnistnet.plan.PLAN_FIELDS, in that order, 8 bytes each). Offsets of
# regions are floats per sample: a region of a block for `rows` samples starts at rows * it.
cdef struct LayerPlan:
    Py_ssize_t kind, act
    Py_ssize_t in_h, in_w, in_c, out_h, out_w, out_c
    Py_ssize_t k_h, k_w, s_h, s_w, pad_top, pad_left
    Py_ssize_t n_in, n_out          # floats per sample
    Py_ssize_t gemm_rows, fan_in    # as a GEMM: rows per sample (out_h * out_w) and K
    Py_ssize_t param, n_param       # kernel offset in params (-1: none); kernel + bias
    Py_ssize_t act_in, act_out      # activation block
    Py_ssize_t scratch, n_scratch   # activation block: patches, argmax or mask (-1: none)
    Py_ssize_t dact_in, dact_out    # gradient block (-1: none)
    Py_ssize_t wt                   # a thread's workspace: the kernel transposed (-1: none)
    Py_ssize_t n_train              # the optimizer's part of n_param (from its start)
    Py_ssize_t stats                # BatchNormalization: mean, var, invstd (3 * out_c) in the
                                    # shared statistics area (-1: none)
    Py_ssize_t shift_h0, shift_h1, shift_w0, shift_w1   # RandomTranslation's shifts
    double rate                     # Dropout's
    double l2                       # the kernel's L2 factor (0: none)
    double fill                     # RandomTranslation's fill value
    double momentum, epsilon        # BatchNormalization's
    double scale, offset            # Rescaling's

# The optimizer's settings (mnistnet.codes.OPTIMIZER_FIELDS, in that order, 8 bytes each).
cdef struct OptimizerSettings:
    Py_ssize_t code         # OPT_*
    double momentum         # SGD's and RMSprop's
    Py_ssize_t nesterov     # SGD's (0 or 1)
    double beta_1, beta_2   # Adam's and AdamW's
    double epsilon          # Adam's, AdamW's and RMSprop's
    double rho              # RMSprop's
    Py_ssize_t centered     # RMSprop's (0 or 1)
    double weight_decay     # AdamW's
    Py_ssize_t use_ema      # any optimizer's (0 or 1): the moving average of the weights
    double ema_momentum
    Py_ssize_t ema_overwrite_frequency  # the average into the weights every this many steps
    Py_ssize_t ema_slot     # the average's block of state

cdef struct Net:
    const LayerPlan* plan   # (n_layers,)
    Py_ssize_t n_layers
    int loss                # LOSS_*
    Py_ssize_t n_params
    Py_ssize_t acts_row     # floats per sample in the activation block
    Py_ssize_t dacts_row    # floats per sample in the gradient regions (the workspace follows)
    Py_ssize_t targets      # per-sample offset of the targets region
    Py_ssize_t n_outputs
    double train_flops      # FLOPs of one sample's forward and backward (Plan.flops_per_sample)
    Py_ssize_t thread_ws    # floats of each thread's workspace (nets that are not dense_only):
                            # one image's patch gradient, then the kernels transposed (wt)
    bint dense_only         # every layer is dense: the dense fast paths may apply
    bint has_l2             # some kernel is L2-regularised
    bint batch_statistics   # some layer (BatchNormalization) reduces over the batch
    Py_ssize_t shared       # floats of the shared statistics area (the workspace's start)
    float* params           # the parameter block (mnistnet.plan)
    float* grads            # same layout as params
    float* state            # the optimizer's slots, each with params' layout
    float* a                # the activation block for `rows` samples
    float* d                # the gradient block for `rows` samples, then the workspace
    Py_ssize_t rows         # samples each region holds (the batch size)
    int team_threads        # threads the workspace has room for (Plan.team_threads)
    OptimizerSettings opt
    # Set by train_step/train_epoch themselves (a caller's values are ignored): NULL, or for
    # a narrow first layer of a dense net trained by SGD its weights and gradient transposed,
    # (out, in), in the workspace, used in place of params' and grads' during the call.
    float* w0t
    float* g0t
    # NULL, or (n_layers + 1, 3) seconds of the calling thread's CPU to which each layer adds
    # its forward, its backward (input gradient) and its weight gradient with the update;
    # the last row's backward: the loss and the output's deltas (fast.profile_step, one
    # thread only).
    double* profile

# One training step's settings.
cdef struct Step:
    float learning_rate
    long long t                     # optimizer step number, from 1 (Adam's bias correction)
    unsigned long long seed         # dropout keys: dropout_key(seed, epoch, step, layer)
    long long epoch, index
    Py_ssize_t batch                # rows of the whole batch (BatchNormalization's statistics)

# How the epoch and predict read their input rows: float32 rows, or uint8 pixels. For a model
# whose first layer is a Rescaling the net is the layers after it (mnistnet/plan.py:
# Plan.engine), and the rows go through that Rescaling as they are read: float rows by its
# kernel, pixels through `values`, its outputs for the 256 pixel values (by the same kernel).
cdef struct InputRows:
    const float* x                  # (N_x, n_in) float32 rows, or NULL for pixels
    const unsigned char* pixels     # (N_x, n_in) uint8 rows (a leading Rescaling's), or NULL
    const float* values             # (256,) with pixels
    bint products                   # with pixels: values[p] is p * hi + p * lo for every p
    float hi, lo                    # (pixels_scaled), computed so rather than looked up
    bint rescaling                  # float rows go through a leading Rescaling ...
    double scale, offset            # ... of this scale and offset

# What an epoch is given, besides the net.
cdef struct EpochArgs:
    InputRows inputs                # (N_x, n_in) samples
    const float* y                  # (N_x, n_outputs) targets
    const long long* perm           # (N,) row order, values < N_x
    Py_ssize_t N, batch_size
    const float* learning_rates     # one per batch
    long long iterations            # optimizer steps before this call
    unsigned long long seed
    long long epoch, first_step     # the epoch, and the step within it of the first batch

cdef struct EpochResult:
    double loss_sum         # sum over completed batches of (batch-mean loss x batch rows)
    Py_ssize_t correct      # rows whose argmax matched the target's
    Py_ssize_t seen         # rows trained on
    Py_ssize_t batches      # batches completed
    int status              # EPOCH_*

cdef float* net_acts(const Net* net, Py_ssize_t l) noexcept nogil
cdef void net_forward(const Net* net,
                      const float* x,              # IN  (n, n_in)
                      float* out,                  # OUT (n, n_outputs)
                      Py_ssize_t n) noexcept nogil
cdef void net_predict(const Net* net,
                      const float* x,              # IN  (N, n_in)
                      float* out,                  # OUT (N, n_outputs)
                      Py_ssize_t N) noexcept nogil
# net_predict of input rows read as InputRows says (each chunk through a leading Rescaling
# into the input region first, if it has one).
cdef void net_predict_inputs(const Net* net,
                             const InputRows* inputs,       # IN  N rows
                             float* out,                    # OUT (N, n_outputs)
                             Py_ssize_t N) noexcept nogil
cdef double train_step(const Net* net, Py_ssize_t n, const Step* step) noexcept nogil
# The optimizer on params[offset: offset + n] (and its state), then the weights' moving
# average with use_ema; whether every new weight is finite.
cdef bint update_block(const Net* net, const Step* s, Py_ssize_t offset,
                       Py_ssize_t n) noexcept nogil
# train_step `steps` times on one thread (steps t, t + 1, ...); the mean CPU seconds a step.
cdef double profile_steps(const Net* net, Py_ssize_t n, const Step* step,
                          Py_ssize_t steps) noexcept nogil
# Layer l alone on the n samples in its input region: forward (step NULL: inference), then
# in training its input gradient from the gradient at its output (for tests of each kind).
cdef void layer_pair(const Net* net, const Step* step, Py_ssize_t l, Py_ssize_t n) noexcept nogil
cdef EpochResult train_epoch(const Net* net, const EpochArgs* args) noexcept nogil
