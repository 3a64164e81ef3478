# The network over its layer plan: regions, forward, deltas, weight gradients with the
# optimizer's update, one step, and predict (included by _kernels.pyx). Every layer's offsets
# come from its LayerPlan row (mnistnet/plan.py computes them once); nothing here recomputes a
# layout. Dispatch by kind happens in one place each: layer_forward, layer_input_grad and
# weight_grads_update_rows.

# ---- regions ---------------------------------------------------------------------------------

cdef inline float* act_at(const Net* net, Py_ssize_t offset) noexcept nogil:
    # A region of the activation block, from its per-sample offset.
    return net.a + net.rows * offset


cdef inline float* dact_at(const Net* net, Py_ssize_t offset) noexcept nogil:
    return net.d + net.rows * offset


cdef float* net_acts(const Net* net, Py_ssize_t l) noexcept nogil:
    """The input region (l = 0), layer l-1's output (1 <= l <= n_layers) or the targets
    (l = n_layers + 1) of the activation block."""
    if l == 0:
        return net.a
    if l > net.n_layers:
        return act_at(net, net.targets)
    return act_at(net, net.plan[l - 1].act_out)


cdef inline float* grad_region(const Net* net, Py_ssize_t l) noexcept nogil:
    # d(loss)/d(layer l's output), after its activation's backward: its pre-activation.
    return dact_at(net, net.plan[l].dact_out)


cdef inline Py_ssize_t width(const Net* net, Py_ssize_t l) noexcept nogil:
    # A dense net's widths: layer l's inputs (l < n_layers), or the outputs (l = n_layers).
    return net.plan[l].n_in if l < net.n_layers else net.n_outputs


cdef inline float* workspace(const Net* net) noexcept nogil:
    # After the gradient regions; its layout is Plan.workspace_floats' (mnistnet/plan.py).
    return net.d + net.rows * net.dacts_row


cdef inline float* thread_workspace(const Net* net, int rank) noexcept nogil:
    # Thread rank's scratch in a net that is not dense_only (conv weights transposed, one
    # image's patch gradient), after the shared statistics area.
    return workspace(net) + net.shared + rank * net.thread_ws


cdef inline float* batch_stats(const Net* net, const LayerPlan* p) noexcept nogil:
    # A BatchNormalization layer's mean, var and invstd (3 x out_c) of the step's batch, in
    # the shared area at the workspace's start (every thread of a team reads them).
    return workspace(net) + p.stats


cdef inline const float* layer_inputs(const Net* net, const LayerPlan* p) noexcept nogil:
    # What a dense or conv layer's forward read: the padded copy of its input (a conv layer
    # that pads), or its input region.
    return act_at(net, p.scratch) if p.kind == KIND_CONV2D and p.n_scratch > 0 else (
        act_at(net, p.act_in))


cdef inline void step_for(const EpochArgs* args, Py_ssize_t start, Step* s) noexcept nogil:
    # The settings of the batch starting at row `start` of the epoch's order.
    cdef Py_ssize_t b = start // args.batch_size
    s.learning_rate = args.learning_rates[b]
    s.t = args.iterations + b + 1
    s.seed = args.seed
    s.epoch = args.epoch
    s.index = args.first_step + b
    s.batch = min(args.batch_size, args.N - start)


cdef inline double profile_start(const Net* net) noexcept nogil:
    # The thread's CPU clock when the net is profiled (fast.profile_step), else 0.
    return mn_thread_seconds() if net.profile != NULL else 0


cdef inline void profile_add(const Net* net, Py_ssize_t l, int phase,
                             double started) noexcept nogil:
    # Adds the CPU time since `started` to layer l's phase (0 forward, 1 backward, 2 update).
    if net.profile != NULL:
        net.profile[3 * l + phase] += mn_thread_seconds() - started


# ---- activations -----------------------------------------------------------------------------

cdef void activation_forward(int code, float* x, Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    # In place on B rows of C (softmax: over each row; a conv output's rows are its pixels).
    if code == ACT_SIGMOID:
        sigmoid_forward(x, x, B * C)
    elif code == ACT_RELU:
        relu_forward(x, x, B * C)
    elif code == ACT_SOFTMAX:
        softmax_forward(x, x, B, C)
    elif code == ACT_TANH:
        tanh_forward(x, x, B * C)


cdef void activation_backward(int code, float* dx, const float* out,
                              Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    if code == ACT_SIGMOID:
        sigmoid_backward(dx, out, dx, B * C)
    elif code == ACT_RELU:
        relu_backward(dx, out, dx, B * C)
    elif code == ACT_SOFTMAX:
        softmax_backward(dx, out, dx, B, C)
    elif code == ACT_TANH:
        tanh_backward(dx, out, dx, B * C)


cdef inline void activation_forward_of(const LayerPlan* p, float* o,
                                       Py_ssize_t n) noexcept nogil:
    activation_forward(<int>p.act, o, n * p.out_h * p.out_w, p.out_c)


# ---- forward ---------------------------------------------------------------------------------

cdef void net_forward(const Net* net, const float* x, float* out, Py_ssize_t n) noexcept nogil:
    """Forward n <= net.rows rows for inference. Hidden layers write their regions of net.a;
    the last layer writes out (which may be its own region)."""
    forward_rows(net, NULL, 0, x, out, 0, n)


cdef void forward_rows(const Net* net, const Step* s, Py_ssize_t first, const float* x,
                       float* out, Py_ssize_t r0, Py_ssize_t n) noexcept nogil:
    """Forward layers first.. of the n samples x that are rows r0.. of the batch: outputs go
    to those rows of their regions (and scratch), the last layer's to out (n, n_outputs).
    s: the training step (dropout on), or NULL (inference: dropout passes through). Rows are
    independent, so threads may each forward their own block."""
    cdef Py_ssize_t l, L = net.n_layers
    cdef const float* inp = x
    cdef float* o
    cdef const LayerPlan* p
    cdef double started
    for l in range(first, L):
        p = &net.plan[l]
        if p.kind == KIND_FLATTEN:  # its output is its input
            if l == L - 1 and out != inp:
                memcpy(out, inp, n * p.n_out * sizeof(float))
            inp = <const float*>out if l == L - 1 else inp
            continue
        o = out if l == L - 1 else act_at(net, p.act_out) + r0 * p.n_out
        started = profile_start(net)
        layer_forward(net, s, l, o, inp, r0, n)
        profile_add(net, l, 0, started)
        inp = o


cdef void layer_forward(const Net* net, const Step* s, Py_ssize_t l, float* o,
                        const float* inp, Py_ssize_t r0, Py_ssize_t n) noexcept nogil:
    # Layer l on n samples (rows r0.. of the batch): inp (n, n_in) -> o (n, n_out). s: the
    # training step, or NULL (inference: dropout and translation pass their input through,
    # batch normalisation uses its moving statistics).
    cdef const LayerPlan* p = &net.plan[l]
    cdef const float* w = net.params + p.param
    cdef float* scratch = act_at(net, p.scratch) + r0 * p.n_scratch
    cdef Window g
    if p.kind == KIND_BATCHNORMALIZATION:
        if s != NULL:  # every thread of a team comes here, rows or not: it has barriers
            batchnorm_train_forward(net, s, p, o, inp, r0, n)
        else:
            batchnorm_inference(o, inp, w, w + p.out_c, w + 2 * p.out_c, w + 3 * p.out_c,
                                p.epsilon, n * p.out_h * p.out_w, p.out_c, p.act == ACT_RELU)
        if p.act == ACT_RELU:
            return  # applied as it normalised
    elif n == 0:
        return
    elif p.kind == KIND_DENSE:
        if l == 0 and net.w0t != NULL:  # a transposed narrow first layer (_dense.pxi)
            # The first layer's delta region is free until the backward pass.
            transposed_first_layer_forward(net, o, grad_region(net, 0) + r0 * p.n_out, inp, n)
        else:
            dense_forward(o, inp, w, w + p.n_in * p.n_out, n, p.n_in, p.n_out)
    elif p.kind == KIND_CONV2D:
        window_of(&g, p)
        conv2d_forward(o, scratch if p.n_scratch > 0 else <float*>inp, inp, w,
                       w + p.fan_in * p.out_c, &g, n, p.out_c, p.act == ACT_RELU)
        if p.act == ACT_RELU:
            return  # applied to each tile of the output while it was in cache
    elif p.kind == KIND_MAXPOOL2D:
        window_of(&g, p)
        maxpool2d_forward(o, <int*>scratch, inp, &g, n)
    elif p.kind == KIND_AVERAGEPOOLING2D or p.kind == KIND_GLOBALAVERAGEPOOLING2D:
        window_of(&g, p)
        avgpool2d_forward(o, inp, &g, n)
    elif p.kind == KIND_DROPOUT and s != NULL and p.rate > 0:
        dropout_forward(o, scratch, inp, p.rate, dropout_key(s.seed, s.epoch, s.index, l),
                        r0 * p.n_out, n * p.n_out)
    elif p.kind == KIND_RANDOMTRANSLATION and s != NULL:
        translate_rows(p, o, inp, dropout_key(s.seed, s.epoch, s.index, l), r0, n, False)
    elif p.kind == KIND_RESCALING:
        rescaling_forward(o, inp, p.scale, p.offset, n * p.n_out)
    elif o != inp:  # Activation; dropout and translation in inference
        memcpy(o, inp, n * p.n_out * sizeof(float))
    activation_forward_of(p, o, n)


cdef void translate_rows(const LayerPlan* p, float* o, const float* inp,
                         unsigned long long key, Py_ssize_t r0, Py_ssize_t n,
                         bint adjoint) noexcept nogil:
    # RandomTranslation on images r0..r0+n of the batch (their shifts come from the key and
    # their index in the batch, so any block of rows gets the same ones), or its adjoint.
    cdef Py_ssize_t b
    cdef long long dy, dx
    for b in range(n):
        image_shift(key, r0 + b, p.shift_h0, p.shift_h1, p.shift_w0, p.shift_w1, &dy, &dx)
        if adjoint:
            dy, dx = -dy, -dx
        shift_image(o + b * p.n_out, inp + b * p.n_in, dy, dx,
                    0 if adjoint else <float>p.fill, p.out_h, p.out_w, p.out_c)


cdef void batchnorm_train_forward(const Net* net, const Step* s, const LayerPlan* p,
                                  float* o, const float* inp, Py_ssize_t r0,
                                  Py_ssize_t n) noexcept nogil:
    """BatchNormalization in training on rows r0..r0+n of the batch, with the statistics of
    the whole batch: once every thread of the team has its rows of the input, each computes
    the statistics of its block of channels over all the rows (in row order: the same bits
    at any thread count), then each normalises its own rows (and applies a relu there). xhat
    is not kept: the backward recomputes it from the input, which stays in its region.
    Outside a team (one thread) the barriers do nothing."""
    cdef Py_ssize_t C = p.out_c, pixels = p.out_h * p.out_w, c0, c1
    cdef float* st = batch_stats(net, p)
    cdef const float* w = net.params + p.param
    block_of(C, mn_team_rank(), mn_team_size(), &c0, &c1)
    mn_team_barrier()  # every row of the input is there
    batchnorm_stats(st, st + C, st + 2 * C, act_at(net, p.act_in), p.epsilon, c0, c1,
                    s.batch * pixels, C)
    mn_team_barrier()  # every channel's statistics are there
    batchnorm_normalize(o, NULL, inp, w, w + C, st, st + 2 * C, n * pixels, C,
                        p.act == ACT_RELU)


cdef inline double loss_forward(int loss, const float* pred, const float* target,
                                Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    if loss == LOSS_CE:
        return crossentropy_forward(pred, target, B, C)
    return mse_forward(pred, target, B, C)


# ---- backward: the deltas of every layer, rows apart -----------------------------------------

cdef void deltas_rows(const Net* net, const Step* s, const float* target, Py_ssize_t r0,
                      Py_ssize_t r1, Py_ssize_t n, float* ws) noexcept nogil:
    """d(loss)/d(each layer's output), rows r0..r1 of a batch of n, back to the first layer
    with weights (nothing before it needs one). Rows are independent (the weights are only
    read) but for BatchNormalization's sums over the batch, so threads may each take a block
    (every thread of a team must call this when the net has batch statistics: it has
    barriers); ws is the calling thread's workspace."""
    cdef Py_ssize_t l, L = net.n_layers, OC = net.n_outputs, nr = r1 - r0
    cdef const LayerPlan* p = &net.plan[L - 1]
    cdef const LayerPlan* q
    cdef float* dinp
    cdef bint fused
    cdef double started = profile_start(net)
    output_deltas(net, dact_at(net, p.dact_out) + r0 * OC, act_at(net, p.act_out) + r0 * OC,
                  target + r0 * OC, nr, n)
    profile_add(net, L, 1, started)
    for l in range(L - 1, -1, -1):
        p = &net.plan[l]
        started = profile_start(net)
        if p.kind == KIND_BATCHNORMALIZATION:
            batchnorm_sums_team(net, p, n)
        if l == 0 or p.dact_in < 0:
            profile_add(net, l, 1, started)
            break
        dinp = dact_at(net, p.dact_in) + r0 * p.n_in
        q = &net.plan[l - 1]
        fused = layer_input_grad(net, s, l, dinp, dact_at(net, p.dact_out) + r0 * p.n_out, r0,
                                 nr, n, ws, q.act == ACT_RELU)
        profile_add(net, l, 1, started)
        if fused:
            continue  # it applied q's relu as well
        # the activation's backward belongs to the layer whose output it was
        started = profile_start(net)
        activation_backward(<int>q.act, dinp, act_at(net, q.act_out) + r0 * q.n_out,
                            nr * q.out_h * q.out_w, q.out_c)
        profile_add(net, l - 1, 1, started)


cdef void batchnorm_sums_team(const Net* net, const LayerPlan* p, Py_ssize_t n) noexcept nogil:
    """BatchNormalization's gradient sums over the whole batch of n: dgamma and dbeta, in
    the gradient block, each thread of a team a block of channels once every row's delta is
    there; then (if its input gradient follows) a barrier, as that needs all of them."""
    cdef Py_ssize_t C = p.out_c, c0, c1
    cdef float* g = net.grads + p.param
    cdef const float* st = batch_stats(net, p)
    block_of(C, mn_team_rank(), mn_team_size(), &c0, &c1)
    mn_team_barrier()  # every row's delta is there
    # xhat from the input and the statistics (mean, invstd), as the forward computed it
    batchnorm_backward_sums(g, g + C, dact_at(net, p.dact_out), act_at(net, p.act_in), st,
                            st + 2 * C, c0, c1, n * p.out_h * p.out_w, C)
    if p.dact_in >= 0:
        mn_team_barrier()  # every channel's sums are there


cdef bint layer_input_grad(const Net* net, const Step* s, Py_ssize_t l, float* dinp,
                           const float* dout, Py_ssize_t r0, Py_ssize_t n, Py_ssize_t batch,
                           float* ws, bint with_relu) noexcept nogil:
    """d(loss)/d(layer l's input) from d(loss)/d(its pre-activation output), n samples (rows
    r0.. of a batch of `batch`). ws: the calling thread's workspace, with the kernels
    transposed (transpose_kernels), except in dense-only nets, whose input gradients are dot
    products with the kernel's rows. with_relu: its input is a relu's output, whose backward
    the kind may apply in the same pass (MaxPool2D does); returns whether it did."""
    cdef const LayerPlan* p = &net.plan[l]
    cdef const float* scratch = act_at(net, p.scratch) + r0 * p.n_scratch
    cdef const float* w = net.params + p.param
    cdef const float* g = net.grads + p.param
    cdef const float* st
    cdef Window win
    if n == 0:
        return False  # no rows: the relu's backward after it has none either
    if p.kind == KIND_DENSE:
        if p.wt >= 0:
            mn_sgemm_nn(dinp, dout, ws + p.wt, NULL, n, p.n_out, p.n_in)
        else:
            mn_sgemm_nt(dinp, dout, w, n, p.n_out, p.n_in)
    elif p.kind == KIND_CONV2D:
        window_of(&win, p)
        conv2d_input_grad(dinp, ws, dout, ws + p.wt, &win, n, p.out_c)
    elif p.kind == KIND_MAXPOOL2D:
        window_of(&win, p)
        maxpool2d_backward(dinp, dout, <const int*>scratch,
                           act_at(net, p.act_in) + r0 * p.n_in if with_relu else NULL, &win, n)
        return with_relu
    elif p.kind == KIND_AVERAGEPOOLING2D or p.kind == KIND_GLOBALAVERAGEPOOLING2D:
        window_of(&win, p)
        avgpool2d_backward(dinp, dout, &win, n)
    elif p.kind == KIND_DROPOUT and p.rate > 0:
        dropout_backward(dinp, dout, scratch, n * p.n_out)
    elif p.kind == KIND_RANDOMTRANSLATION:
        translate_rows(p, dinp, dout, dropout_key(s.seed, s.epoch, s.index, l), r0, n, True)
    elif p.kind == KIND_RESCALING:
        rescaling_backward(dinp, dout, p.scale, n * p.n_out)
    elif p.kind == KIND_BATCHNORMALIZATION:
        st = batch_stats(net, p)  # mean, var, invstd: xhat from the input, as in the forward
        batchnorm_input_grad(dinp, dout, act_at(net, p.act_in) + r0 * p.n_in, st,
                             st + 2 * p.out_c, w, st + 2 * p.out_c, g, g + p.out_c,
                             n * p.out_h * p.out_w, batch * p.out_h * p.out_w, p.out_c)
    elif p.kind != KIND_FLATTEN and dinp != dout:  # Activation, dropout at rate 0
        memcpy(dinp, dout, n * p.n_out * sizeof(float))
    # Flatten: its gradient region is its input's.
    return False


cdef inline void output_deltas(const Net* net, float* dz, const float* probs,
                               const float* target, Py_ssize_t nr, Py_ssize_t n) noexcept nogil:
    # d(loss)/d(the last layer's pre-activation) for nr rows of a batch of n.
    cdef Py_ssize_t OC = net.n_outputs
    cdef int act = <int>net.plan[net.n_layers - 1].act
    if net.loss == LOSS_CE and act == ACT_SOFTMAX:
        scaled_difference(dz, probs, target, nr * OC, 1.0 / <float>n)  # fused softmax + CE
    else:
        scaled_difference(dz, probs, target, nr * OC, 2.0 / <float>(n * OC))  # MSE
        activation_backward(act, dz, probs, nr, OC)


# The samples forward_backward_rows takes through every layer at a time: a few hundred KB of
# activations, so that a block's backward finds its forward's outputs still in cache.
cdef Py_ssize_t CHUNK_FLOATS = 1 << 19


cdef double forward_backward_rows(const Net* net, const Step* s, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t n, float* ws) noexcept nogil:
    """Forward, loss and deltas of rows r0..r1 of a batch of n whose inputs and targets are
    in their regions, a block of samples at a time. Returns the sum over those rows of their
    losses (mean per block x rows); NaN/Inf stops it before that block's deltas."""
    cdef Py_ssize_t L = net.n_layers, n_in = width(net, 0), OC = net.n_outputs, c, m
    cdef Py_ssize_t chunk = max(1, CHUNK_FLOATS // (net.acts_row + net.dacts_row))
    cdef float* probs = net_acts(net, L)
    cdef const float* targets = net_acts(net, L + 1)
    cdef double total = 0
    transpose_kernels(net, ws)
    if net.batch_statistics:
        # BatchNormalization reduces over the whole batch: the rows in one block, and every
        # barrier of the forward and backward passed even with no rows or a non-finite loss
        # (the step then stops before its update, all threads together).
        m = r1 - r0
        forward_rows(net, s, 0, net.a + r0 * n_in, probs + r0 * OC, r0, m)
        if m > 0:
            total = loss_forward(net.loss, probs + r0 * OC, targets + r0 * OC, m, OC) * m
        deltas_rows(net, s, targets, r0, r1, n, ws)
        return total
    c = r0
    while c < r1:
        m = min(chunk, r1 - c)
        forward_rows(net, s, 0, net.a + c * n_in, probs + c * OC, c, m)
        total += loss_forward(net.loss, probs + c * OC, targets + c * OC, m, OC) * m
        if not isfinite(total):
            return total
        deltas_rows(net, s, targets, c, c + m, n, ws)
        c += m
    return total


cdef void layer_pair(const Net* net, const Step* s, Py_ssize_t l, Py_ssize_t n) noexcept nogil:
    """Layer l alone on the n samples in its input region, as a step runs it: its forward
    into its output region (s NULL: inference), then, in training and when its input has a
    gradient, d(loss)/d(its input) from d(loss)/d(its pre-activation output) in its gradient
    region. What fast.layer_pair holds each kind's kernel pair to its twin with."""
    cdef const LayerPlan* p = &net.plan[l]
    cdef float* ws = thread_workspace(net, 0)
    layer_forward(net, s, l, act_at(net, p.act_out), act_at(net, p.act_in), 0, n)
    if s == NULL or p.dact_in < 0:
        return
    transpose_kernels(net, ws)
    if p.kind == KIND_BATCHNORMALIZATION:
        batchnorm_sums_team(net, p, n)
    layer_input_grad(net, s, l, dact_at(net, p.dact_in), dact_at(net, p.dact_out), 0, n, n,
                     ws, False)


cdef void transpose_kernels(const Net* net, float* ws) noexcept nogil:
    # The kernels whose input gradients the deltas compute, transposed into this thread's
    # workspace (once a step: the weights change only between steps).
    cdef Py_ssize_t l
    cdef const LayerPlan* p
    cdef Window g
    for l in range(net.n_layers):
        p = &net.plan[l]
        if p.wt < 0:
            continue
        if p.kind == KIND_CONV2D:
            window_of(&g, p)
            conv2d_kernel_for_input_grad(ws + p.wt, net.params + p.param, &g, p.out_c)
        else:
            transpose(ws + p.wt, net.params + p.param, p.fan_in, p.out_c)


# ---- weight gradients and the update, by blocks of kernel rows -------------------------------

# Narrower rows than this are mostly masked vector tails, which an update fused into the
# GEMM's tiles pays for at every row: a separate pass over the contiguous block is faster
# (measured on the perceptron's 784x10 layer before it trained transposed: 61 ms an epoch
# fused, 51 ms apart). Narrow layers after the first still take that path.
cdef Py_ssize_t FUSED_SGD_MIN_WIDTH = 32


cdef bint weight_grads_update_rows(const Net* net, const Step* s, Py_ssize_t l, Py_ssize_t c0,
                                   Py_ssize_t c1, Py_ssize_t n, Py_ssize_t b0,
                                   Py_ssize_t b1) noexcept nogil:
    """Rows c0..c1 of layer l's kernel gradient (its GEMM inputs^T @ deltas over the n
    samples' rows: a dense layer's input rows, a conv layer's patches, read from the input
    its forward read), and elements b0..b1
    of its bias gradient, each applied by the optimizer as soon as computed; plain SGD is
    fused into the GEMM's tiles for wide layers. Returns whether every updated value stayed
    finite. Threads may each take a block of rows and of bias elements: each element is the
    same sum in the same order."""
    cdef const LayerPlan* p = &net.plan[l]
    cdef Py_ssize_t K = p.fan_in, OC = p.out_c, M = n * p.gemm_rows
    cdef float* gw = net.grads + p.param
    cdef float* w = net.params + p.param
    cdef const float* inp = layer_inputs(net, p)
    cdef const float* dz = dact_at(net, p.dact_out)
    cdef bint finite
    cdef Window win
    if l == 0 and net.w0t != NULL:  # a transposed narrow first layer (_dense.pxi)
        finite = transposed_first_layer_update(net, s, dz, inp, c0, c1, M)
    elif p.kind == KIND_CONV2D:  # patches^T @ dz, from the input the forward read
        window_of(&win, p)
        conv2d_weight_grad(gw, inp, dz, &win, n, OC, c0, c1)
        finite = kernel_rows_update(net, s, p, c0, c1)
    elif (net.opt.code == OPT_SGD and OC >= FUSED_SGD_MIN_WIDTH and p.l2 == 0
          and not net.opt.use_ema):
        finite = mn_sgemm_sgd(gw + c0 * OC, OC, inp + c0, 1, K, dz, OC, w + c0 * OC, OC,
                              s.learning_rate, c1 - c0, M, OC)
    else:
        mn_sgemm_strided(gw + c0 * OC, OC, inp + c0, 1, K, dz, OC, NULL, c1 - c0, M, OC)
        finite = kernel_rows_update(net, s, p, c0, c1)
    if b1 > b0:
        mn_column_sums_block(gw + K * OC, dz, b0, b1, M, OC)
        finite &= update_block(net, s, p.param + K * OC + b0, b1 - b0)
    return finite


cdef inline bint kernel_rows_update(const Net* net, const Step* s, const LayerPlan* p,
                                    Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    # Rows c0..c1 of a kernel, their gradient computed: + its L2 term, then the optimizer.
    cdef Py_ssize_t OC = p.out_c
    if p.l2 > 0:
        add_l2_gradient(net.grads + p.param + c0 * OC, net.params + p.param + c0 * OC,
                        <float>(2 * p.l2), (c1 - c0) * OC)
    return update_block(net, s, p.param + c0 * OC, (c1 - c0) * OC)


cdef inline void add_l2_gradient(float* g, const float* w, float factor,
                                 Py_ssize_t n) noexcept nogil:
    # g += (2 l2) w: the gradient of l2 * sum(w^2), from the weights before the update.
    cdef Py_ssize_t i
    for i in range(n):
        g[i] = g[i] + factor * w[i]


cdef double l2_penalty(const Net* net) noexcept nogil:
    # sum over the L2-regularised kernels of l2 * sum(w^2), in double (reference.l2_penalty).
    cdef Py_ssize_t l, i
    cdef const LayerPlan* p
    cdef const float* w
    cdef double total = 0, squares
    for l in range(net.n_layers):
        p = &net.plan[l]
        if p.l2 > 0:
            w = net.params + p.param
            squares = 0
            for i in range(p.fan_in * p.out_c):
                squares += <double>w[i] * <double>w[i]
            total += p.l2 * squares
    return total


cdef bint batchnorm_update(const Net* net, const Step* s, const LayerPlan* p, Py_ssize_t c0,
                           Py_ssize_t c1) noexcept nogil:
    """Channels c0..c1 of a BatchNormalization layer: the optimizer on gamma and beta (their
    gradient sums are already there), then the moving averages from the batch's statistics,
    moving = moving * momentum + batch * (1 - momentum). Their gradient is 0."""
    cdef Py_ssize_t C = p.out_c, c
    cdef float* w = net.params + p.param
    cdef float* g = net.grads + p.param
    cdef const float* st = batch_stats(net, p)
    cdef float momentum = <float>p.momentum, rest = 1 - momentum
    cdef bint finite = (update_block(net, s, p.param + c0, c1 - c0)
                        & update_block(net, s, p.param + C + c0, c1 - c0))
    for c in range(c0, c1):
        w[2 * C + c] = w[2 * C + c] * momentum + st[c] * rest
        w[3 * C + c] = w[3 * C + c] * momentum + st[C + c] * rest
        g[2 * C + c] = 0
        g[3 * C + c] = 0
    return finite


cdef bint row_blocks_update(const Net* net, const Step* s, Py_ssize_t first, int rank,
                            int size, Py_ssize_t n) noexcept nogil:
    """This thread's block of kernel-gradient rows of the layers first.. with weights, and
    its part of their biases, computed, then applied: in a dense-only net the whole bias of
    the layers l with l % size == rank (they are short), else a block of each bias (a conv
    layer's sums over every pixel of the batch are long). With size 1, all of them. Returns
    whether every updated value stayed finite."""
    cdef Py_ssize_t l, c0, c1, b0, b1, OC
    cdef bint finite = True
    cdef double started
    for l in range(first, net.n_layers):
        if net.plan[l].param < 0:
            continue
        OC = net.plan[l].out_c
        started = profile_start(net)
        if net.plan[l].kind == KIND_BATCHNORMALIZATION:
            block_of(OC, rank, size, &b0, &b1)
            finite &= batchnorm_update(net, s, &net.plan[l], b0, b1)
            profile_add(net, l, 2, started)
            continue
        if l == 0 and net.w0t != NULL:
            column_block(width(net, 0), rank, size, &c0, &c1)  # columns of w0t's rows
        else:
            block_of(net.plan[l].fan_in, rank, size, &c0, &c1)
        if net.dense_only:
            b0 = 0
            b1 = OC if l % size == rank else 0
        else:
            column_block(OC, rank, size, &b0, &b1)
        finite &= weight_grads_update_rows(net, s, l, c0, c1, n, b0, b1)
        profile_add(net, l, 2, started)
    return finite


# ---- one step ----------------------------------------------------------------------------------

cdef double train_step(const Net* net, Py_ssize_t n, const Step* step) noexcept nogil:
    """Forward, loss, backward and update on the n samples already in the input and target
    regions. Returns the batch-mean loss; if it is not finite, nothing is updated. If the
    update would make some weight NaN or Inf, those weights keep their values and the step
    returns Inf. The gradient is left in net.grads."""
    cdef Net t = for_training(net)
    cdef Step s = step[0]
    s.batch = n  # whatever the caller's Step says
    cdef double loss = net_step(&t, &s, n)
    end_training(&t)
    return loss


cdef double profile_steps(const Net* net, Py_ssize_t n, const Step* step,
                          Py_ssize_t steps) noexcept nogil:
    cdef Step s = step[0]
    cdef Py_ssize_t i
    cdef double started
    mn_set_thread_cap(1)
    started = mn_thread_seconds()
    for i in range(steps):
        train_step(net, n, &s)
        s.t += 1
    started = mn_thread_seconds() - started
    mn_set_thread_cap(0)
    return started / steps


cdef double net_step(const Net* net, const Step* s, Py_ssize_t n) noexcept nogil:
    # train_step on a net already set up by for_training, on the calling thread.
    cdef double total = forward_backward_rows(net, s, 0, n, n, thread_workspace(net, 0))
    if net.has_l2:
        total += l2_penalty(net) * n  # Keras reports the penalty in the loss
    if not isfinite(total):
        return total
    # Every delta first (they need the weights as they were), then each layer's gradient,
    # applied as it is computed.
    if not row_blocks_update(net, s, 0, 0, 1, n):
        return INFINITY  # the update overflowed: report the step as non-finite
    return total / n


# ---- predict -----------------------------------------------------------------------------------

cdef void net_predict(const Net* net, const float* x, float* out, Py_ssize_t N) noexcept nogil:
    """Forward all N rows of x, net.rows at a time. With several threads and at least a full
    chunk of rows, each thread forwards its own contiguous block of x through its own rows of
    the activation regions, with no barrier at all (rows are independent; every element gets
    the same bits as on one thread); otherwise one chunk after another on the calling thread
    (a GEMM of a few rows split across threads waits longer for them than it saves: a
    convnet's one image took 0.35-1.2 ms on two threads, 87 us on one)."""
    cdef InputRows inputs
    inputs.x = x
    inputs.pixels = NULL
    inputs.values = NULL
    inputs.products = False
    inputs.rescaling = False
    net_predict_inputs(net, &inputs, out, N)


cdef void net_predict_inputs(const Net* net, const InputRows* inputs, float* out,
                             Py_ssize_t N) noexcept nogil:
    # net_predict of rows read as `inputs` says.
    cdef int threads = min(mn_get_num_threads(), MAX_TEAM)
    cdef Py_ssize_t start = 0, n
    if threads < 2 or N < net.rows or net.rows < 2 * threads:
        mn_set_thread_cap(1)
        while start < N:
            n = net.rows if N - start > net.rows else N - start
            forward_inputs(net, inputs, start, out, 0, n)
            start += n
        mn_set_thread_cap(0)
        return
    with parallel(num_threads=threads):
        predict_member(net, inputs, out, N)


cdef void predict_member(const Net* net, const InputRows* inputs, float* out,
                         Py_ssize_t N) noexcept nogil:
    """One thread of net_predict's team: rows [r0, r1) of x, net.rows // size at a time."""
    cdef int rank = mn_team_rank(), size = mn_team_size()
    cdef Py_ssize_t sub = net.rows // size, r0, r1, n
    block_of(N, rank, size, &r0, &r1)
    mn_set_thread_cap(1)
    while r0 < r1:
        n = sub if r1 - r0 > sub else r1 - r0
        forward_inputs(net, inputs, r0, out, rank * sub, n)
        r0 += n
    mn_set_thread_cap(0)


cdef inline void forward_inputs(const Net* net, const InputRows* inputs, Py_ssize_t start,
                                float* out, Py_ssize_t r0, Py_ssize_t n) noexcept nogil:
    # Input rows start..start+n forward into those rows of out, through rows r0.. of the
    # regions: plain float rows read where they are, others first read into the input
    # region (through the leading Rescaling: read_inputs).
    cdef Py_ssize_t n_in = width(net, 0)
    cdef float* region = net.a + r0 * n_in
    if inputs.pixels == NULL and not inputs.rescaling:
        forward_rows(net, NULL, 0, inputs.x + start * n_in, out + start * net.n_outputs, r0,
                     n)
        return
    read_inputs(region, inputs, start * n_in, n * n_in)
    forward_rows(net, NULL, 0, region, out + start * net.n_outputs, r0, n)


cdef bint read_inputs(float* dst, const InputRows* inputs, Py_ssize_t at,
                      Py_ssize_t n) noexcept nogil:
    """n input values from element `at` on into dst as the net takes them: floats copied
    (and through a leading Rescaling), pixels through their table. Returns whether they are
    all finite (floats only can fail)."""
    cdef bint finite
    if inputs.pixels != NULL and inputs.products:
        pixels_scaled(dst, inputs.pixels + at, inputs.hi, inputs.lo, n)
        return True
    if inputs.pixels != NULL:
        pixels_as_floats(dst, inputs.pixels + at, inputs.values, n)
        return True
    finite = mn_copy_finite(dst, inputs.x + at, n)
    if inputs.rescaling:
        rescaling_forward(dst, dst, inputs.scale, inputs.offset, n)
    return finite
