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



# ---- windows over channels-last images (conv2d and maxpool2d) ------------------------------

cdef inline void window_of(Window* g, const LayerPlan* p) noexcept nogil:
    # A conv or pool layer's geometry, from its row of the plan.
    g.H, g.W, g.C = p.in_h, p.in_w, p.in_c
    g.OH, g.OW = p.out_h, p.out_w
    g.KH, g.KW, g.SH, g.SW = p.k_h, p.k_w, p.s_h, p.s_w
    g.PT, g.PL = p.pad_top, p.pad_left


cdef inline void columns_inside(const Window* g, Py_ssize_t w0, Py_ssize_t* j0,
                                Py_ssize_t* j1) noexcept nogil:
    # The kernel columns j0..j1 of a window starting at image column w0 that fall inside the
    # image (j1 <= j0: none).
    j0[0] = 0 if w0 >= 0 else -w0
    j1[0] = g.KW if w0 + g.KW <= g.W else g.W - w0


cdef inline void copy_floats(float* dst, const float* src, Py_ssize_t n) noexcept nogil:
    # memcpy, but a plain loop for the short runs of a thin image (a call would cost more).
    cdef Py_ssize_t i
    if n >= 16:
        memcpy(dst, src, n * sizeof(float))
    else:
        for i in range(n):
            dst[i] = src[i]


cdef inline void zero_floats(float* dst, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = 0


cdef void im2col(float* patches, const float* inp, const Window* g,
                 Py_ssize_t B) noexcept nogil:
    """patches[b, oh * OW + ow] = the KH x KW x C inputs of that output pixel's window, in
    Keras' kernel order (row, column, channel), zero outside the image. A window row is one
    contiguous run of the image row (channels last), so it is copied whole."""
    cdef Py_ssize_t b, oh, ow, di, h, w0, j0, j1, C = g.C, run = g.KW * g.C
    cdef Py_ssize_t K = g.KH * run
    cdef const float* img
    cdef float* seg
    for b in range(B):
        img = inp + b * g.H * g.W * C
        for oh in range(g.OH):
            for ow in range(g.OW):
                w0 = ow * g.SW - g.PL
                columns_inside(g, w0, &j0, &j1)
                seg = patches + ((b * g.OH + oh) * g.OW + ow) * K
                for di in range(g.KH):
                    h = oh * g.SH - g.PT + di
                    if h < 0 or h >= g.H or j1 <= j0:
                        zero_floats(seg, run)
                    else:
                        zero_floats(seg, j0 * C)
                        copy_floats(seg + j0 * C, img + (h * g.W + w0 + j0) * C, (j1 - j0) * C)
                        zero_floats(seg + j1 * C, (g.KW - j1) * C)
                    seg += run


cdef void col2im(float* dinp, const float* dpatches, const Window* g,
                 Py_ssize_t B) noexcept nogil:
    """The adjoint of im2col: dinp = 0, then each patch's gradient added to the pixels it
    was read from, pixel by pixel in output order (the same order for any block of images)."""
    cdef Py_ssize_t b, oh, ow, di, h, w0, j0, j1, i, C = g.C, run = g.KW * g.C
    cdef Py_ssize_t K = g.KH * run, n
    cdef float* img
    cdef float* dst
    cdef const float* seg
    zero_floats(dinp, B * g.H * g.W * C)
    for b in range(B):
        img = dinp + b * g.H * g.W * C
        for oh in range(g.OH):
            for ow in range(g.OW):
                w0 = ow * g.SW - g.PL
                columns_inside(g, w0, &j0, &j1)
                seg = dpatches + ((b * g.OH + oh) * g.OW + ow) * K
                for di in range(g.KH):
                    h = oh * g.SH - g.PT + di
                    if h >= 0 and h < g.H and j1 > j0:
                        dst = img + (h * g.W + w0 + j0) * C
                        n = (j1 - j0) * C
                        for i in range(n):
                            dst[i] += seg[j0 * C + i]
                    seg += run


cdef void conv2d_forward(float* out, float* patches, const float* inp, const float* weight,
                         const float* bias, const Window* g, Py_ssize_t B,
                         Py_ssize_t OC) noexcept nogil:
    # out = patches @ weight + bias, weight as its (KH*KW*C, OC) matrix. patches == inp: a
    # 1x1 stride-1 convolution without padding, whose patches are its input rows.
    if patches != inp:
        im2col(patches, inp, g, B)
    dense_forward(out, patches, weight, bias, B * g.OH * g.OW, g.KH * g.KW * g.C, OC)


cdef void conv2d_input_grad(float* dinp, float* scratch, const float* dout,
                            const float* weight, const Window* g, Py_ssize_t B,
                            Py_ssize_t OC) noexcept nogil:
    """dinp = col2im(dout @ weight^T), image by image: weight transposed to scratch first
    (so the product is a row-major GEMM along the patch, not dot products over OC), then one
    image's patch gradient after it. scratch: OC*K + OH*OW*K floats, K = KH*KW*C."""
    cdef Py_ssize_t b, K = g.KH * g.KW * g.C, P = g.OH * g.OW, n_img = g.H * g.W * g.C
    cdef float* wt = scratch
    cdef float* dp = scratch + OC * K
    transpose(wt, weight, K, OC)
    for b in range(B):
        if g.KH == 1 and g.KW == 1 and g.SH == 1 and g.SW == 1:  # 1x1: patches are pixels
            mn_sgemm_nn(dinp + b * n_img, dout + b * P * OC, wt, NULL, P, OC, K)
        else:
            mn_sgemm_nn(dp, dout + b * P * OC, wt, NULL, P, OC, K)
            col2im(dinp + b * n_img, dp, g, 1)


cdef void conv2d_backward(float* dinp, float* dweight, float* dbias, float* scratch,
                          const float* dout, const float* patches, const float* weight,
                          const Window* g, Py_ssize_t B, Py_ssize_t OC) noexcept nogil:
    # dweight = patches^T @ dout and dbias = column sums of dout, over the B*OH*OW pixel
    # rows; dinp (unless NULL) = col2im(dout @ weight^T).
    cdef Py_ssize_t M = B * g.OH * g.OW, K = g.KH * g.KW * g.C
    mn_sgemm_tn(dweight, patches, dout, K, M, OC)
    mn_column_sums(dbias, dout, M, OC)
    if dinp != NULL:
        conv2d_input_grad(dinp, scratch, dout, weight, g, B, OC)


# ---- maxpool2d -------------------------------------------------------------------------------

cdef void maxpool2d_forward(float* out, int* argmax, const float* inp, const Window* g,
                            Py_ssize_t B) noexcept nogil:
    """out = the max of each window over the cells inside the image, argmax = its index
    (h * W + w) * C + c in the image: the first maximum in row-major window order (the
    first cell is taken first, then only a strictly larger value replaces it)."""
    cdef Py_ssize_t b, oh, ow, di, dj, c, h0, w0, i0, i1, j0, j1, at, C = g.C
    cdef Py_ssize_t n_img = g.H * g.W * C, n_out = g.OH * g.OW * C
    cdef const float* img
    cdef const float* src
    cdef float* o
    cdef int* am
    cdef float v
    for b in range(B):
        img = inp + b * n_img
        for oh in range(g.OH):
            h0 = oh * g.SH - g.PT
            i0 = 0 if h0 >= 0 else -h0
            i1 = g.KH if h0 + g.KH <= g.H else g.H - h0
            for ow in range(g.OW):
                w0 = ow * g.SW - g.PL
                columns_inside(g, w0, &j0, &j1)
                o = out + b * n_out + (oh * g.OW + ow) * C
                am = argmax + b * n_out + (oh * g.OW + ow) * C
                at = ((h0 + i0) * g.W + w0 + j0) * C
                for c in range(C):
                    o[c] = img[at + c]
                    am[c] = <int>(at + c)
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        at = ((h0 + di) * g.W + w0 + dj) * C
                        src = img + at
                        for c in range(C):
                            v = src[c]
                            if v > o[c]:
                                o[c] = v
                                am[c] = <int>(at + c)


cdef void maxpool2d_backward(float* dinp, const float* dout, const int* argmax,
                             const Window* g, Py_ssize_t B) noexcept nogil:
    # dinp = 0, then each output's gradient added at its argmax, in output order.
    cdef Py_ssize_t b, e, n_img = g.H * g.W * g.C, n_out = g.OH * g.OW * g.C
    cdef float* img
    zero_floats(dinp, B * n_img)
    for b in range(B):
        img = dinp + b * n_img
        for e in range(n_out):
            img[argmax[b * n_out + e]] += dout[b * n_out + e]


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
    # are at least rate * 2^32; kept elements are scaled by 1 / (1 - rate).
    cdef unsigned long long threshold = <unsigned long long>(rate * 4294967296.0)
    cdef float one = 1
    cdef float scale = one / (one - <float>rate)
    cdef float m
    cdef Py_ssize_t i
    for i in range(N):
        m = scale if (mn_mix64(key + <unsigned long long>(first + i)) >> 32) >= threshold else 0
        mask[i] = m
        out[i] = inp[i] * m


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
