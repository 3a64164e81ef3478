/* mn_window.c — windows over channels-last images: the direct convolution's entry points
 * (the padded copy its windows read), conv2d's patches (im2col) and their adjoint, and max
 * pooling's entry points. The patch copies move runs of KW*C contiguous
 * floats (a window row is one run of an image row, channels last). */
#include <string.h>

#include "mn_internal.h"
#include "mn_kernels.h"

#if defined(__GNUC__) && !defined(__clang__)
/* Keep the short copy and zero loops loops: gcc would turn them into calls to memcpy and
 * memset, which cost more than copying the 3 floats of a thin image's window row. */
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

/* The kernel columns [j0, j1) of a window starting at image column w0 inside the image. */
static inline void columns_inside(const mn_window *g, ptrdiff_t w0, ptrdiff_t *j0,
                                  ptrdiff_t *j1)
{
    *j0 = w0 >= 0 ? 0 : -w0;
    *j1 = w0 + g->KW <= g->W ? g->KW : g->W - w0;
}

static inline void copy_run(float *restrict dst, const float *restrict src, ptrdiff_t n)
{
    /* a loop, not memcpy: the runs of a thin image are a few floats, shorter than a call */
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = src[i];
}

static inline void zero_run(float *dst, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = 0.0f;
}

void mn_im2col(float *patches, const float *inp, const mn_window *g, ptrdiff_t B)
{
    const ptrdiff_t C = g->C, run = g->KW * C, K = g->KH * run, n_img = g->H * g->W * C;
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *img = inp + b * n_img;
        for (ptrdiff_t oh = 0; oh < g->OH; oh++)
            for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                const ptrdiff_t w0 = ow * g->SW - g->PL;
                ptrdiff_t j0, j1;
                columns_inside(g, w0, &j0, &j1);
                float *seg = patches + ((b * g->OH + oh) * g->OW + ow) * K;
                for (ptrdiff_t di = 0; di < g->KH; di++, seg += run) {
                    const ptrdiff_t h = oh * g->SH - g->PT + di;
                    if (h < 0 || h >= g->H || j1 <= j0) {
                        zero_run(seg, run);
                        continue;
                    }
                    zero_run(seg, j0 * C);
                    copy_run(seg + j0 * C, img + (h * g->W + w0 + j0) * C, (j1 - j0) * C);
                    zero_run(seg + j1 * C, (g->KW - j1) * C);
                }
            }
    }
}

void mn_col2im(float *dinp, const float *dpatches, const mn_window *g, ptrdiff_t B)
{
    const ptrdiff_t C = g->C, run = g->KW * C, K = g->KH * run, n_img = g->H * g->W * C;
    zero_run(dinp, B * n_img);
    for (ptrdiff_t b = 0; b < B; b++) {
        float *img = dinp + b * n_img;
        for (ptrdiff_t oh = 0; oh < g->OH; oh++)
            for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                const ptrdiff_t w0 = ow * g->SW - g->PL;
                ptrdiff_t j0, j1;
                columns_inside(g, w0, &j0, &j1);
                const float *seg = dpatches + ((b * g->OH + oh) * g->OW + ow) * K;
                for (ptrdiff_t di = 0; di < g->KH; di++, seg += run) {
                    const ptrdiff_t h = oh * g->SH - g->PT + di;
                    if (h < 0 || h >= g->H || j1 <= j0) continue;
                    float *restrict dst = img + (h * g->W + w0 + j0) * C;
                    const float *restrict src = seg + j0 * C;
                    for (ptrdiff_t i = 0; i < (j1 - j0) * C; i++) dst[i] += src[i];
                }
            }
    }
}

/* ---- direct convolution ------------------------------------------------------------------ */

int mn_conv_inside(const mn_window *g, mn_window *inside)
{
    const ptrdiff_t hs = (g->OH - 1) * g->SH + g->KH, ws = (g->OW - 1) * g->SW + g->KW;
    const int pads = g->PT > 0 || g->PL > 0 || hs > g->H || ws > g->W;
    *inside = *g;
    inside->PT = inside->PL = 0;
    if (pads) { /* the windows read a copy of the span they cover, zero outside the image */
        inside->H = hs;
        inside->W = ws;
    }
    return pads;
}

void mn_pad_images(float *padded, const float *inp, const mn_window *g, ptrdiff_t B)
{
    mn_window in;
    mn_conv_inside(g, &in);
    const ptrdiff_t C = g->C, n_img = g->H * g->W * C, n_pad = in.H * in.W * C;
    /* the image's rows and columns that land inside the span */
    const ptrdiff_t rows = g->H < in.H - g->PT ? g->H : in.H - g->PT;
    const ptrdiff_t cols = g->W < in.W - g->PL ? g->W : in.W - g->PL;
    for (ptrdiff_t b = 0; b < B; b++) {
        float *dst = padded + b * n_pad;
        const float *src = inp + b * n_img;
        zero_run(dst, g->PT * in.W * C);
        for (ptrdiff_t h = 0; h < rows; h++) {
            float *d = dst + (g->PT + h) * in.W * C;
            zero_run(d, g->PL * C);
            copy_run(d + g->PL * C, src + h * g->W * C, cols * C);
            zero_run(d + (g->PL + cols) * C, (in.W - g->PL - cols) * C);
        }
        zero_run(dst + (g->PT + rows) * in.W * C, (in.H - g->PT - rows) * in.W * C);
    }
}

void mn_conv2d_forward(float *out, float *padded, const float *inp, const float *weight,
                       const float *bias, const mn_window *g, ptrdiff_t B, ptrdiff_t OC,
                       int relu)
{
    mn_window in;
    const float *x = inp;
    if (mn_conv_inside(g, &in)) {
        mn_pad_images(padded, inp, g, B);
        x = padded;
    }
    const mn_gemm_table *t = mn_active_gemm();
    for (ptrdiff_t b = 0; b < B; b++)
        t->conv_forward(out + b * g->OH * g->OW * OC, x + b * in.H * in.W * in.C, weight, bias,
                        &in, OC, 0, relu);
}

int mn_conv2d_input_grad_direct(const mn_window *g)
{
    return g->SH == 1 && g->SW == 1;
}

void mn_conv2d_flip_kernel(float *flipped, const float *weight, const mn_window *g,
                           ptrdiff_t OC)
{
    const ptrdiff_t C = g->C;
    for (ptrdiff_t kh = 0; kh < g->KH; kh++)
        for (ptrdiff_t kw = 0; kw < g->KW; kw++) {
            const float *w = weight + ((g->KH - 1 - kh) * g->KW + (g->KW - 1 - kw)) * C * OC;
            float *f = flipped + (kh * g->KW + kw) * OC * C;
            for (ptrdiff_t oc = 0; oc < OC; oc++)
                for (ptrdiff_t c = 0; c < C; c++) f[oc * C + c] = w[c * OC + oc];
        }
}

void mn_conv2d_input_grad(float *dinp, float *scratch, const float *dout,
                          const float *flipped, const mn_window *g, ptrdiff_t B, ptrdiff_t OC)
{
    /* dout zero-padded by KH-1 rows and KW-1 columns all round, then correlated with the
     * flipped kernel: each input pixel's gradient a sum over (kh, kw, oc), the padding
     * adding zeros. Only the image's own pixels are computed (the span's padding is not). */
    mn_window d; /* the windows over the padded dout, from the image's first row on */
    d.C = OC;
    d.H = g->OH + 2 * (g->KH - 1) - g->PT;
    d.W = g->OW + 2 * (g->KW - 1);
    d.KH = g->KH;
    d.KW = g->KW;
    d.SH = d.SW = 1;
    d.OH = g->H;
    d.OW = g->W;
    d.PT = d.PL = 0;
    const ptrdiff_t n_out = g->OH * g->OW * OC, n_img = g->H * g->W * g->C;
    const mn_gemm_table *t = mn_active_gemm();
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *src = dout + b * n_out;
        zero_run(scratch, (g->KH - 1) * d.W * OC);
        for (ptrdiff_t oh = 0; oh < g->OH; oh++) {
            float *row = scratch + (g->KH - 1 + oh) * d.W * OC;
            zero_run(row, (g->KW - 1) * OC);
            copy_run(row + (g->KW - 1) * OC, src + oh * g->OW * OC, g->OW * OC);
            zero_run(row + (g->KW - 1 + g->OW) * OC, (g->KW - 1) * OC);
        }
        zero_run(scratch + (g->KH - 1 + g->OH) * d.W * OC, (g->KH - 1) * d.W * OC);
        /* input pixel (h, w) is span pixel (h + PT, w + PL) */
        t->conv_forward(dinp + b * n_img, scratch + (g->PT * d.W + g->PL) * OC, flipped, NULL,
                        &d, g->C, g->KH - 1 - g->PT, 0);
    }
}

void mn_conv2d_weight_grad(float *dweight, const float *x, const float *dout,
                           const mn_window *g, ptrdiff_t B, ptrdiff_t OC, ptrdiff_t k0,
                           ptrdiff_t k1)
{
    mn_window in;
    mn_conv_inside(g, &in);
    mn_active_gemm()->conv_weight_grad(dweight, x, in.H * in.W * in.C, dout, &in, OC, B, k0,
                                       k1);
}

/* ---- batch normalisation (per SIMD path in mn_gemm_impl.h) ------------------------------- */

void mn_bn_stats(float *mean, float *var, float *invstd, const float *x, double epsilon,
                 ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t M, ptrdiff_t C)
{
    mn_active_gemm()->bn_stats(mean, var, invstd, x, epsilon, c0, c1, M, C);
}

void mn_bn_normalize(float *out, float *xhat, const float *x, const float *gamma,
                     const float *beta, const float *mean, const float *invstd, ptrdiff_t M,
                     ptrdiff_t C, int relu)
{
    mn_active_gemm()->bn_normalize(out, xhat, x, gamma, beta, mean, invstd, M, C, relu);
}

void mn_bn_inference(float *out, const float *x, const float *gamma, const float *beta,
                     const float *moving_mean, const float *moving_variance, double epsilon,
                     ptrdiff_t M, ptrdiff_t C, int relu)
{
    mn_active_gemm()->bn_inference(out, x, gamma, beta, moving_mean, moving_variance, epsilon,
                                   M, C, relu);
}

void mn_bn_backward_sums(float *dgamma, float *dbeta, const float *dout, const float *x,
                         const float *shift, const float *scale, ptrdiff_t c0, ptrdiff_t c1,
                         ptrdiff_t M, ptrdiff_t C)
{
    mn_active_gemm()->bn_backward_sums(dgamma, dbeta, dout, x, shift, scale, c0, c1, M, C);
}

void mn_bn_input_grad(float *dinp, const float *dout, const float *x, const float *shift,
                      const float *scale, const float *gamma, const float *invstd,
                      const float *dgamma, const float *dbeta, ptrdiff_t rows, ptrdiff_t M,
                      ptrdiff_t C)
{
    mn_active_gemm()->bn_input_grad(dinp, dout, x, shift, scale, gamma, invstd, dgamma, dbeta,
                                    rows, M, C);
}

void mn_maxpool2d_forward(float *out, int *argmax, const float *inp, const mn_window *g,
                          ptrdiff_t B)
{
    mn_active_gemm()->maxpool2d_forward(out, argmax, inp, g, B);
}

void mn_maxpool2d_backward(float *dinp, const float *dout, const int *argmax,
                           const float *relu_in, const mn_window *g, ptrdiff_t B)
{
    mn_active_gemm()->maxpool2d_backward(dinp, dout, argmax, relu_in, g, B);
}
