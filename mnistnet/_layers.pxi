# Layer kernels, losses and metrics (included by _kernels.pyx; declared in _kernels.pxd).
# Each layer kind is a *_forward / *_backward pair over raw float32 pointers: outputs, inputs,
# weights, then sizes. Their NumPy twins, of the same names, are in mnistnet/reference.py.

# ---- dense and the activations ---------------------------------------------------------------

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
    mn_sigmoid_backward(dinp, out, dout, N)


cdef void relu_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil:
    # max(inp, 0) with NaN propagated, as np.maximum.
    mn_relu_forward(out, inp, N)


cdef void relu_backward(float* dinp, const float* out, const float* dout,
                        Py_ssize_t N) noexcept nogil:
    mn_relu_backward(dinp, out, dout, N)


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



# ---- windows over channels-last images (conv2d and maxpool2d) ------------------------------

cdef inline void window_of(Window* g, const LayerPlan* p) noexcept nogil:
    # A conv or pool layer's geometry, from its row of the plan.
    g.H, g.W, g.C = p.in_h, p.in_w, p.in_c
    g.OH, g.OW = p.out_h, p.out_w
    g.KH, g.KW, g.SH, g.SW = p.k_h, p.k_w, p.s_h, p.s_w
    g.PT, g.PL = p.pad_top, p.pad_left


cdef void im2col(float* patches, const float* inp, const Window* g,
                 Py_ssize_t B) noexcept nogil:
    # The patches of each output pixel, zero outside the image (csrc/mn_window.c).
    mn_im2col(patches, inp, <const mn_window*>g, B)


cdef void col2im(float* dinp, const float* dpatches, const Window* g,
                 Py_ssize_t B) noexcept nogil:
    # dinp = 0, then each patch's gradient added back to the pixels it was read from.
    mn_col2im(dinp, dpatches, <const mn_window*>g, B)


cdef void conv2d_forward(float* out, float* patches, const float* inp, const float* weight,
                         const float* bias, const Window* g, Py_ssize_t B,
                         Py_ssize_t OC) noexcept nogil:
    # out = patches @ weight + bias, weight as its (KH*KW*C, OC) matrix. patches == inp: a
    # 1x1 stride-1 convolution without padding, whose patches are its input rows.
    if patches != inp:
        im2col(patches, inp, g, B)
    dense_forward(out, patches, weight, bias, B * g.OH * g.OW, g.KH * g.KW * g.C, OC)


cdef void conv2d_input_grad(float* dinp, float* dpatches, const float* dout,
                            const float* weight_t, const Window* g, Py_ssize_t B,
                            Py_ssize_t OC) noexcept nogil:
    """dinp = col2im(dout @ weight^T), image by image, from the kernel already transposed
    (so the product is a row-major GEMM along the patch, not dot products over OC); each
    image's patch gradient goes to dpatches (OH*OW x KH*KW*C floats) first."""
    cdef Py_ssize_t b, K = g.KH * g.KW * g.C, P = g.OH * g.OW, n_img = g.H * g.W * g.C
    for b in range(B):
        if g.KH == 1 and g.KW == 1 and g.SH == 1 and g.SW == 1:  # 1x1: patches are pixels
            mn_sgemm_nn(dinp + b * n_img, dout + b * P * OC, weight_t, NULL, P, OC, K)
        else:
            mn_sgemm_nn(dpatches, dout + b * P * OC, weight_t, NULL, P, OC, K)
            col2im(dinp + b * n_img, dpatches, g, 1)


cdef void conv2d_backward(float* dinp, float* dweight, float* dbias, float* scratch,
                          const float* dout, const float* patches, const float* weight,
                          const Window* g, Py_ssize_t B, Py_ssize_t OC) noexcept nogil:
    # dweight = patches^T @ dout and dbias = column sums of dout, over the B*OH*OW pixel
    # rows; dinp (unless NULL) = col2im(dout @ weight^T). scratch: OC*K + OH*OW*K floats
    # (the kernel transposed, one image's patch gradient), K = KH*KW*C.
    cdef Py_ssize_t M = B * g.OH * g.OW, K = g.KH * g.KW * g.C
    mn_sgemm_tn(dweight, patches, dout, K, M, OC)
    mn_column_sums(dbias, dout, M, OC)
    if dinp != NULL:
        transpose(scratch, weight, K, OC)
        conv2d_input_grad(dinp, scratch + OC * K, dout, scratch, g, B, OC)


# ---- maxpool2d -------------------------------------------------------------------------------

cdef void maxpool2d_forward(float* out, int* argmax, const float* inp, const Window* g,
                            Py_ssize_t B) noexcept nogil:
    # The max of each window over its cells inside the image, and where it is (the first
    # maximum in row-major window order); vectorised per SIMD path in csrc/mn_gemm_impl.h.
    mn_maxpool2d_forward(out, argmax, inp, <const mn_window*>g, B)


cdef void maxpool2d_backward(float* dinp, const float* dout, const int* argmax,
                             const Window* g, Py_ssize_t B) noexcept nogil:
    # dinp = 0, then each output's gradient added at its argmax, in output order.
    mn_maxpool2d_backward(dinp, dout, argmax, <const mn_window*>g, B)


# ---- dropout ---------------------------------------------------------------------------------

cdef unsigned long long dropout_key(unsigned long long seed, long long epoch, long long step,
                                    long long layer) noexcept nogil:
    # The key of one dropout layer's masks in one training step (reference.dropout_key).
    cdef unsigned long long key = mn_mix64(seed)
    key = mn_mix64(key ^ <unsigned long long>epoch)
    key = mn_mix64(key ^ <unsigned long long>step)
    return mn_mix64(key ^ <unsigned long long>layer)


cdef void dropout_forward(float* out, float* mask, const float* inp, double rate,
                          unsigned long long key, Py_ssize_t first,
                          Py_ssize_t N) noexcept nogil:
    # Element first + i of the batch is kept when the top 32 bits of mix64(key + first + i)
    # are at least rate * 2^32; kept elements are scaled by 1 / (1 - rate) (csrc/, per SIMD
    # path).
    mn_dropout_forward(out, mask, inp, rate, key, first, N)


cdef void dropout_backward(float* dinp, const float* dout, const float* mask,
                           Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(N):
        dinp[i] = dout[i] * mask[i]


# ---- losses and metrics ----------------------------------------------------------------------

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



cdef void transpose(float* dst, const float* src, Py_ssize_t rows,
                    Py_ssize_t cols) noexcept nogil:
    # dst (cols, rows) = src (rows, cols)^T
    cdef Py_ssize_t r, c
    for r in range(rows):
        for c in range(cols):
            dst[c * rows + r] = src[r * cols + c]
