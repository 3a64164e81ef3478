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


cdef void tanh_forward(float* out, const float* inp, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(N):
        out[i] = tanhf(inp[i])


cdef void tanh_backward(float* dinp, const float* out, const float* dout,
                        Py_ssize_t N) noexcept nogil:
    # dinp = dout * (1 - out^2), from the forward output.
    cdef Py_ssize_t i
    for i in range(N):
        dinp[i] = dout[i] * (1 - out[i] * out[i])


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


cdef bint conv2d_pads(const Window* g) noexcept nogil:
    # Whether the windows read a padded copy of the input (csrc/mn_window.c).
    cdef Window inside
    return mn_conv_inside(<const mn_window*>g, <mn_window*>&inside)


cdef void conv2d_forward(float* out, float* padded, const float* inp, const float* weight,
                         const float* bias, const Window* g, Py_ssize_t B, Py_ssize_t OC,
                         bint relu) noexcept nogil:
    # out = im2col(inp) @ weight + bias, weight as its (KH*KW*C, OC) matrix, each output the
    # same chain of multiply-adds, computed directly from the (padded) input: the patches
    # never go to memory (csrc/mn_gemm_impl.h, per SIMD path); then ReLU if relu, on each
    # tile while it is in cache.
    mn_conv2d_forward(out, padded, inp, weight, bias, <const mn_window*>g, B, OC, relu)


cdef void conv2d_weight_grad(float* dweight, const float* x, const float* dout,
                             const Window* g, Py_ssize_t B, Py_ssize_t OC, Py_ssize_t k0,
                             Py_ssize_t k1) noexcept nogil:
    # Rows k0..k1 of patches^T @ dout over the B images, from x (what conv2d_forward read).
    mn_conv2d_weight_grad(dweight, x, dout, <const mn_window*>g, B, OC, k0, k1)


cdef void conv2d_kernel_for_input_grad(float* dst, const float* weight, const Window* g,
                                       Py_ssize_t OC) noexcept nogil:
    # What conv2d_input_grad reads of the kernel: turned round with its channels swapped
    # (stride 1), else transposed (OC, KH*KW*C).
    if mn_conv2d_input_grad_direct(<const mn_window*>g):
        mn_conv2d_flip_kernel(dst, weight, <const mn_window*>g, OC)
    else:
        transpose(dst, weight, g.KH * g.KW * g.C, OC)


cdef void conv2d_input_grad(float* dinp, float* scratch, const float* dout,
                            const float* weight_t, const Window* g, Py_ssize_t B,
                            Py_ssize_t OC) noexcept nogil:
    """dinp from dout and the kernel as conv2d_kernel_for_input_grad made it: for stride 1,
    a direct correlation of dout (zero-padded in scratch) with the flipped kernel, no patches
    (csrc/mn_window.c); otherwise col2im(dout @ weight^T), image by image, each image's patch
    gradient first in scratch (OH*OW x KH*KW*C floats). See conv2d_grad_scratch_floats in
    mnistnet/codes.py for scratch's size."""
    cdef Py_ssize_t b, K = g.KH * g.KW * g.C, P = g.OH * g.OW, n_img = g.H * g.W * g.C
    cdef float* dpatches = scratch
    if mn_conv2d_input_grad_direct(<const mn_window*>g):
        mn_conv2d_input_grad(dinp, scratch, dout, weight_t, <const mn_window*>g, B, OC)
        return
    for b in range(B):
        if g.KH == 1 and g.KW == 1 and g.SH == 1 and g.SW == 1:  # 1x1: patches are pixels
            mn_sgemm_nn(dinp + b * n_img, dout + b * P * OC, weight_t, NULL, P, OC, K)
        else:
            mn_sgemm_nn(dpatches, dout + b * P * OC, weight_t, NULL, P, OC, K)
            col2im(dinp + b * n_img, dpatches, g, 1)


cdef void conv2d_backward(float* dinp, float* dweight, float* dbias, float* scratch,
                          const float* dout, const float* x, const float* weight,
                          const Window* g, Py_ssize_t B, Py_ssize_t OC) noexcept nogil:
    # dweight = patches^T @ dout and dbias = column sums of dout, over the B*OH*OW pixel
    # rows; dinp (unless NULL) = col2im(dout @ weight^T). scratch: OC*K + OH*OW*K floats
    # (the kernel transposed, one image's patch gradient), K = KH*KW*C.
    cdef Py_ssize_t M = B * g.OH * g.OW, K = g.KH * g.KW * g.C
    conv2d_weight_grad(dweight, x, dout, g, B, OC, 0, K)
    mn_column_sums(dbias, dout, M, OC)
    if dinp != NULL:
        conv2d_kernel_for_input_grad(scratch, weight, g, OC)
        conv2d_input_grad(dinp, scratch + OC * K, dout, scratch, g, B, OC)


# ---- maxpool2d -------------------------------------------------------------------------------

cdef void maxpool2d_forward(float* out, int* argmax, const float* inp, const Window* g,
                            Py_ssize_t B) noexcept nogil:
    # The max of each window over its cells inside the image, and where it is (the first
    # maximum in row-major window order); vectorised per SIMD path in csrc/mn_gemm_impl.h.
    mn_maxpool2d_forward(out, argmax, inp, <const mn_window*>g, B)


cdef void maxpool2d_backward(float* dinp, const float* dout, const int* argmax,
                             const float* relu_in, const Window* g,
                             Py_ssize_t B) noexcept nogil:
    # dinp = 0, then each output's gradient added at its argmax, in output order; then (in
    # the same pass) relu_backward's rule if relu_in is the relu's output.
    mn_maxpool2d_backward(dinp, dout, argmax, relu_in, <const mn_window*>g, B)


# ---- avgpool2d -------------------------------------------------------------------------------

cdef inline void cells_inside(const Window* g, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t* i0,
                              Py_ssize_t* i1, Py_ssize_t* j0, Py_ssize_t* j1) noexcept nogil:
    # The rows i0..i1 and columns j0..j1 of output (oh, ow)'s window inside the image.
    cdef Py_ssize_t h0 = oh * g.SH - g.PT, w0 = ow * g.SW - g.PL
    i0[0] = max(h0, 0)
    i1[0] = min(h0 + g.KH, g.H)
    j0[0] = max(w0, 0)
    j1[0] = min(w0 + g.KW, g.W)


cdef void avgpool2d_forward(float* out, const float* inp, const Window* g,
                            Py_ssize_t B) noexcept nogil:
    # The sum of each window's cells inside the image, in row-major order, divided by their
    # number (reference.avgpool2d_forward); the channel loop runs along contiguous floats.
    cdef Py_ssize_t b, oh, ow, i, j, c, i0, i1, j0, j1, C = g.C
    cdef const float* img
    cdef const float* x
    cdef float* o
    cdef float count
    for b in range(B):
        img = inp + b * g.H * g.W * C
        for oh in range(g.OH):
            for ow in range(g.OW):
                o = out + ((b * g.OH + oh) * g.OW + ow) * C
                cells_inside(g, oh, ow, &i0, &i1, &j0, &j1)
                for c in range(C):
                    o[c] = 0
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        x = img + (i * g.W + j) * C
                        for c in range(C):
                            o[c] = o[c] + x[c]
                count = <float>((i1 - i0) * (j1 - j0))
                for c in range(C):
                    o[c] = o[c] / count


cdef void avgpool2d_backward(float* dinp, const float* dout, const Window* g,
                             Py_ssize_t B) noexcept nogil:
    # dinp = 0, then each output's gradient / its window's cell count added to those cells,
    # outputs in row-major order.
    cdef Py_ssize_t b, oh, ow, i, j, c, i0, i1, j0, j1, C = g.C, n_img = g.H * g.W * g.C
    cdef float* img
    cdef float* x
    cdef const float* d
    cdef float count
    fill_floats(dinp, 0, B * n_img)
    for b in range(B):
        img = dinp + b * n_img
        for oh in range(g.OH):
            for ow in range(g.OW):
                d = dout + ((b * g.OH + oh) * g.OW + ow) * C
                cells_inside(g, oh, ow, &i0, &i1, &j0, &j1)
                count = <float>((i1 - i0) * (j1 - j0))
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        x = img + (i * g.W + j) * C
                        for c in range(C):
                            x[c] = x[c] + d[c] / count


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


# ---- translate (RandomTranslation) ------------------------------------------------------

cdef inline void image_shift(unsigned long long key, Py_ssize_t index, Py_ssize_t h0,
                             Py_ssize_t h1, Py_ssize_t w0, Py_ssize_t w1, long long* dy,
                             long long* dx) noexcept nogil:
    # Image `index` of a batch moves by dy in [h0, h1], dx in [w0, w1]: the top and low 32
    # bits of mix64(key + index) (reference.translate_shifts).
    cdef unsigned long long bits = mn_mix64(key + <unsigned long long>index)
    dy[0] = h0 + <long long>((bits >> 32) % <unsigned long long>(h1 - h0 + 1))
    dx[0] = w0 + <long long>((bits & 0xFFFFFFFFULL) % <unsigned long long>(w1 - w0 + 1))


cdef void translate_shifts(long long* dy, long long* dx, unsigned long long key,
                           Py_ssize_t first, Py_ssize_t B, Py_ssize_t h0, Py_ssize_t h1,
                           Py_ssize_t w0, Py_ssize_t w1) noexcept nogil:
    cdef Py_ssize_t b
    for b in range(B):
        image_shift(key, first + b, h0, h1, w0, w1, &dy[b], &dx[b])


cdef inline void fill_floats(float* x, float value, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = value


cdef void shift_image(float* out, const float* src, long long dy, long long dx, float fill,
                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t C) noexcept nogil:
    # out[h, w] = src[h - dy, w - dx] where that is inside the image, else fill: one image
    # (H, W, C), a row span at a time.
    cdef Py_ssize_t h, sh, lo, hi, row = W * C
    lo = min(max(<Py_ssize_t>dx, 0), W)        # the first and last + 1 output columns ...
    hi = max(min(W + <Py_ssize_t>dx, W), 0)    # ... that read a source column
    for h in range(H):
        sh = h - <Py_ssize_t>dy
        if sh < 0 or sh >= H or lo >= hi:
            fill_floats(out + h * row, fill, row)
            continue
        fill_floats(out + h * row, fill, lo * C)
        memcpy(out + h * row + lo * C, src + sh * row + (lo - dx) * C,
               (hi - lo) * C * sizeof(float))
        fill_floats(out + h * row + hi * C, fill, (W - hi) * C)


cdef void translate_forward(float* out, const float* inp, const long long* dy,
                            const long long* dx, float fill, Py_ssize_t B, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t b, n_img = H * W * C
    for b in range(B):
        shift_image(out + b * n_img, inp + b * n_img, dy[b], dx[b], fill, H, W, C)


cdef void translate_backward(float* dinp, const float* dout, const long long* dy,
                             const long long* dx, Py_ssize_t B, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t C) noexcept nogil:
    # The adjoint of a shift is the opposite shift, zero-filled.
    cdef Py_ssize_t b, n_img = H * W * C
    for b in range(B):
        shift_image(dinp + b * n_img, dout + b * n_img, -dy[b], -dx[b], 0, H, W, C)


# ---- batchnorm -----------------------------------------------------------------------------
# Rows of C channels, M of them (a conv output's pixels are rows). Per-channel sums run in
# double over the rows in order (mn_gemm_impl.h), so a channel's sum is the same whichever
# thread takes it.


cdef void batchnorm_stats(float* mean, float* var, float* invstd, const float* inp,
                          double epsilon, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t M,
                          Py_ssize_t C) noexcept nogil:
    mn_bn_stats(mean, var, invstd, inp, epsilon, c0, c1, M, C)


cdef void batchnorm_normalize(float* out, float* xhat, const float* inp, const float* gamma,
                              const float* beta, const float* mean, const float* invstd,
                              Py_ssize_t M, Py_ssize_t C, bint relu) noexcept nogil:
    # xhat = (x - mean) * invstd (unless NULL); out = gamma * xhat + beta, relu'd if asked.
    mn_bn_normalize(out, xhat, inp, gamma, beta, mean, invstd, M, C, relu)


cdef void batchnorm_inference(float* out, const float* inp, const float* gamma,
                              const float* beta, const float* moving_mean,
                              const float* moving_variance, double epsilon, Py_ssize_t M,
                              Py_ssize_t C, bint relu) noexcept nogil:
    # out = gamma * ((x - moving_mean) * invstd) + beta, invstd from the moving variance;
    # relu'd if asked.
    mn_bn_inference(out, inp, gamma, beta, moving_mean, moving_variance, epsilon, M, C, relu)


cdef void batchnorm_backward_sums(float* dgamma, float* dbeta, const float* dout,
                                  const float* x, const float* shift, const float* scale,
                                  Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t M,
                                  Py_ssize_t C) noexcept nogil:
    # xhat = (x - shift) * scale, see _kernels.pxd.
    mn_bn_backward_sums(dgamma, dbeta, dout, x, shift, scale, c0, c1, M, C)


cdef void batchnorm_input_grad(float* dinp, const float* dout, const float* x,
                               const float* shift, const float* scale, const float* gamma,
                               const float* invstd, const float* dgamma, const float* dbeta,
                               Py_ssize_t rows, Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    # dinp = (gamma * invstd / M) * ((M * dout - dbeta) - xhat * dgamma), the factor in
    # double then rounded once; xhat = (x - shift) * scale.
    mn_bn_input_grad(dinp, dout, x, shift, scale, gamma, invstd, dgamma, dbeta, rows, M, C)


# ---- rescaling -------------------------------------------------------------------------------

cdef void rescaling_forward(float* out, const float* inp, double scale, double offset,
                            Py_ssize_t N) noexcept nogil:
    # In double, rounded once: pixels p through scale 1/255 give float32(p) / 255 exactly
    # (float32 products by float32(1/255) miss it by an ulp for 126 of the 256 values).
    cdef Py_ssize_t i
    for i in range(N):
        out[i] = <float>(<double>inp[i] * scale + offset)


cdef void rescaling_backward(float* dinp, const float* dout, double scale,
                             Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(N):
        dinp[i] = <float>(<double>dout[i] * scale)


cdef void pixels_as_floats(float* out, const unsigned char* pixels, const float* values,
                           Py_ssize_t N) noexcept nogil:
    # A table of 256: any Rescaling's outputs to the bit, 0.2 ns an element.
    cdef Py_ssize_t i
    for i in range(N):
        out[i] = values[pixels[i]]


cdef void pixels_scaled(float* out, const unsigned char* pixels, float hi, float lo,
                        Py_ssize_t N) noexcept nogil:
    # Products the compiler vectorises: 0.12 ns an element with SSE2, against the table's
    # 0.2 (on the shared AMD EPYC of these measurements; MNIST's epoch reads 47 million
    # pixels). p * hi is exact, and the sum rounds once: the correctly rounded p * (hi + lo)
    # but near a tie, which the caller rules out by checking all 256 values against the
    # table.
    cdef Py_ssize_t i
    cdef float p
    for i in range(N):
        p = <float>pixels[i]
        out[i] = p * hi + p * lo


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
