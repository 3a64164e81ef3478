/*
 * mn_kernels.h — the C API of mnistnet's compiled core.
 *
 * Every buffer is a C-contiguous (row-major) float32 array; a shape comment follows each
 * pointer. Sizes are element counts. Kernels never allocate and never fail: the caller
 * (mnistnet's Cython layer, or your C code) checks shapes first. Results do not depend on the
 * thread count: work is split over output rows or columns, never over a reduction axis.
 *
 * Naming follows llm.c: X_forward / X_backward, outputs first, then inputs, then weights,
 * then sizes.
 *
 *   mn_dense_forward(out, inp, weight, bias, B, C, OC)
 *       out = inp @ weight + bias            out (B, OC), inp (B, C), weight (C, OC), bias (OC)
 *   mn_dense_backward(dinp, dweight, dbias, dout, inp, weight, B, C, OC)
 *       dinp = dout @ weight^T               dinp (B, C), may be NULL to skip
 *       dweight = inp^T @ dout               dweight (C, OC)
 *       dbias = sum over rows of dout        dbias (OC), may be NULL to skip
 *
 * SIMD: the instruction set is chosen once, from CPU detection, the first time a kernel runs
 * (or by mn_simd_select). Paths: "avx512", "avx2" (with FMA), "sse2" on x86-64; "neon" on
 * AArch64; "scalar" everywhere.
 *
 * From C: an installed mnistnet ships this header in the folder mnistnet.get_include() names,
 * and the C objects its extension is linked from as a static library in
 * mnistnet.get_library_dir() (libmn_kernels.a; mn_kernels.lib with MSVC):
 *     cc -O2 prog.c -I"$INC" "$LIB/libmn_kernels.a" -fopenmp -lm
 * with -fopenmp only if mnistnet.show_config() reports OpenMP on (MSVC: /openmp).
 * tests/embedding/use_kernels.c is a complete example.
 */
#ifndef MN_KERNELS_H
#define MN_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- dense layer ------------------------------------------------------------------------ */
void mn_dense_forward(float *out, const float *inp, const float *weight, const float *bias,
                      ptrdiff_t B, ptrdiff_t C, ptrdiff_t OC);
void mn_dense_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const float *weight,
                       ptrdiff_t B, ptrdiff_t C, ptrdiff_t OC);

/* ---- windows over channels-last images (conv2d's patches, max pooling) ------------------- */
/* The geometry of a KH x KW window sliding by (SH, SW) over B images of (H, W, C), with
 * padding PT rows above and PL columns left (and whatever the output needs below and right):
 * an (OH, OW) output. mnistnet computes it as Keras does for "valid" and "same". */
typedef struct {
    ptrdiff_t H, W, C, OH, OW, KH, KW, SH, SW, PT, PL;
} mn_window;
/* The direct convolution (no patches in memory). Its windows read `inside`: the images
 * themselves when the layer does not pad (returns 0), else a copy of the span they cover,
 * zero outside the image (returns 1; inside's H and W are the span's, PT = PL = 0). */
int mn_conv_inside(const mn_window *g, mn_window *inside);
/* That copy of B images.   padded (B, inside.H, inside.W, C), inp (B, H, W, C) */
void mn_pad_images(float *padded, const float *inp, const mn_window *g, ptrdiff_t B);
/* out = inp (B, H, W, C) convolved with weight (KH, KW, C, OC), + bias: each output the sum
 * over its window in (kh, kw, c) order, as im2col + the GEMM would give it, then ReLU if relu
 * (mn_relu_forward's rule); padded receives the padded copy when the layer pads (else it is
 * not touched and may be NULL).   out (B, OH, OW, OC) */
void mn_conv2d_forward(float *out, float *padded, const float *inp, const float *weight,
                       const float *bias, const mn_window *g, ptrdiff_t B, ptrdiff_t OC,
                       int relu);
/* Rows k0..k1 of dweight (KH*KW*C, OC) = the sum over B images of each window cell times
 * the gradient at its output: x is what mn_conv2d_forward read (padded, or inp), dout
 * (B, OH, OW, OC). Rows are independent: threads may each take a block. */
void mn_conv2d_weight_grad(float *dweight, const float *x, const float *dout,
                           const mn_window *g, ptrdiff_t B, ptrdiff_t OC, ptrdiff_t k0,
                           ptrdiff_t k1);
/* Whether mn_conv2d_input_grad applies (stride 1); else im2col's adjoint (mn_col2im). */
int mn_conv2d_input_grad_direct(const mn_window *g);
/* flipped (KH*KW*OC, C): the kernel turned round (its cell (KH-1-kh, KW-1-kw) at (kh, kw)),
 * input and output channels swapped: what mn_conv2d_input_grad reads. */
void mn_conv2d_flip_kernel(float *flipped, const float *weight, const mn_window *g,
                           ptrdiff_t OC);
/* dinp (B, H, W, C) = the gradient of a stride-1 convolution's input from its output's,
 * dout (B, OH, OW, OC): the correlation of dout, zero-padded, with the flipped kernel, each
 * pixel a sum over (kh, kw, oc). scratch: (OH + 2 KH - 2) * (OW + 2 KW - 2) * OC floats. */
void mn_conv2d_input_grad(float *dinp, float *scratch, const float *dout,
                          const float *flipped, const mn_window *g, ptrdiff_t B, ptrdiff_t OC);
/* GFLOP/s of a register-resident loop of the active SIMD path's multiply-adds on `threads`
 * threads at once (at most mn_available_cores()), run for about `seconds`: the machine's
 * arithmetic limit. */
double mn_fma_peak_gflops(int threads, double seconds);
/* Seconds of CPU the calling thread has used (wall seconds where there is no such clock). */
double mn_thread_seconds(void);
/* patches[b, oh, ow, :] = the KH x KW x C inputs of that output's window, in Keras' kernel
 * order (row, column, channel), zero outside the image.  patches (B, OH*OW, KH*KW*C) */
void mn_im2col(float *patches, const float *inp, const mn_window *g, ptrdiff_t B);
/* The adjoint: dinp = 0, then each patch's gradient added to the pixels it was read from. */
void mn_col2im(float *dinp, const float *dpatches, const mn_window *g, ptrdiff_t B);
/* out = the max of each window over its cells inside the image; argmax = its index
 * (h * W + w) * C + c in the image, the first maximum in row-major window order.
 * out, argmax (B, OH, OW, C), inp (B, H, W, C) */
void mn_maxpool2d_forward(float *out, int *argmax, const float *inp, const mn_window *g,
                          ptrdiff_t B);
/* dinp = 0, then dout added at each output's argmax, in output order.  dinp (B, H, W, C)
 * Where g's windows tile the image (KH = SH, KW = SW, no padding), each argmax in its own
 * window as the forward gives it, each input is written once instead (the same values);
 * KH = 0: no window known, the scatter.
 * relu_in: NULL, or the pool's input (B, H, W, C) when it is a relu's output whose backward
 * this applies too: a cell's gradient kept only where that input is > 0 (relu_backward's
 * rule, so the same bits as relu_backward after, one pass over the cells fewer). */
void mn_maxpool2d_backward(float *dinp, const float *dout, const int *argmax,
                           const float *relu_in, const mn_window *g, ptrdiff_t B);

/* ---- batch normalisation over M rows of C channels ---------------------------------------- */
/* Channels c0..c1: mean, var (biased) and invstd = 1 / sqrt(var + epsilon) of x's rows, each
 * channel's sums in double over the rows in order.   mean, var, invstd (C), x (M, C) */
void mn_bn_stats(float *mean, float *var, float *invstd, const float *x, double epsilon,
                 ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t M, ptrdiff_t C);
/* xhat = (x - mean) * invstd; out = gamma * xhat + beta, then relu's x <= 0 ? 0 : x if relu.
 * xhat NULL: not stored (the backward recomputes it from x).   out, xhat, x (M, C) */
void mn_bn_normalize(float *out, float *xhat, const float *x, const float *gamma,
                     const float *beta, const float *mean, const float *invstd, ptrdiff_t M,
                     ptrdiff_t C, int relu);
/* Inference: out = gamma * ((x - moving_mean) * invstd) + beta, then relu's x <= 0 ? 0 : x if
 * relu; invstd = 1 / sqrt(moving_variance + epsilon), rounded once.   out, x (M, C) */
void mn_bn_inference(float *out, const float *x, const float *gamma, const float *beta,
                     const float *moving_mean, const float *moving_variance, double epsilon,
                     ptrdiff_t M, ptrdiff_t C, int relu);
/* The backward reads the forward's xhat as (x - shift) * scale per channel: from the forward's
 * input with shift = mean and scale = invstd (the forward's xhat bit for bit), or from a
 * stored xhat with shift 0 and scale 1.
 * Channels c0..c1: dgamma = sum(dout * xhat), dbeta = sum(dout), in double over the rows. */
void mn_bn_backward_sums(float *dgamma, float *dbeta, const float *dout, const float *x,
                         const float *shift, const float *scale, ptrdiff_t c0, ptrdiff_t c1,
                         ptrdiff_t M, ptrdiff_t C);
/* rows rows of dinp = (gamma * invstd / M) * ((M * dout - dbeta) - xhat * dgamma), the sums
 * those of the whole batch of M rows.   dinp, dout, x (rows, C) */
void mn_bn_input_grad(float *dinp, const float *dout, const float *x, const float *shift,
                      const float *scale, const float *gamma, const float *invstd,
                      const float *dgamma, const float *dbeta, ptrdiff_t rows, ptrdiff_t M,
                      ptrdiff_t C);

/* ---- dropout ------------------------------------------------------------------------------ */
/* out = inp * mask, mask[i] = 0 or 1 / (1 - rate): element first + i is kept when the top 32
 * bits of SplitMix64's output function of key + first + i are at least rate * 2^32 (the
 * counter makes a block of a batch's elements get the mask the whole batch would). */
void mn_dropout_forward(float *out, float *mask, const float *inp, double rate,
                        unsigned long long key, ptrdiff_t first, ptrdiff_t n);

/* ---- activations ------------------------------------------------------------------------- */
/* out = 1 / (1 + e^-x), elementwise; out may be inp.                       out, inp (n) */
void mn_sigmoid_forward(float *out, const float *inp, ptrdiff_t n);
/* out = max(inp, 0) elementwise (NaN stays NaN); out may be inp.          out, inp (n) */
void mn_relu_forward(float *out, const float *inp, ptrdiff_t n);
/* dinp = dout where out > 0, else 0; dinp may be dout.            dinp, out, dout (n) */
void mn_relu_backward(float *dinp, const float *out, const float *dout, ptrdiff_t n);
/* dinp = dout * out * (1 - out), out the sigmoid's output; dinp may be dout.        (n) */
void mn_sigmoid_backward(float *dinp, const float *out, const float *dout, ptrdiff_t n);
/* out = softmax of each row of inp (shifted by the row max); out may be inp.   (B, C) */
void mn_softmax_forward(float *out, const float *inp, ptrdiff_t B, ptrdiff_t C);

/* ---- optimiser and data movement -------------------------------------------------------- */
/* params -= learning_rate * grads, elementwise (split across threads for large n). Returns 1,
 * or 0 if some new value would be NaN or Inf: those elements keep their previous value. */
int mn_sgd_update(float *params, const float *grads, float learning_rate, ptrdiff_t n);
/* 1 if none of x[0..n) is NaN or Inf, else 0 (split across threads for large n). */
int mn_all_finite(const float *x, ptrdiff_t n);
/* dst = src (n floats, not overlapping); returns 1 if none is NaN or Inf, else 0. The
 * training epoch gathers its input rows through it, so it checks them on the way. */
int mn_copy_finite(float *dst, const float *src, ptrdiff_t n);
/* Hint the cache to fetch rows[0..n) of x (row width `width` floats): the next batch. */
void mn_prefetch_rows(const float *x, const long long *rows, ptrdiff_t n, ptrdiff_t width);
/* The same, but spread out: the GEMMs this thread runs next issue the prefetches a few at a
 * time between their multiply-adds (replacing any still queued); mn_prefetch_flush issues
 * whatever is left. rows must stay valid until then. */
void mn_prefetch_rows_later(const float *x, const long long *rows, ptrdiff_t n,
                            ptrdiff_t width);
/* mn_prefetch_rows_later for columns c0..c1 only of rows of x with row stride ld. */
void mn_prefetch_columns_later(const float *x, ptrdiff_t ld, const long long *rows,
                               ptrdiff_t n, ptrdiff_t c0, ptrdiff_t c1);
/* mn_prefetch_columns_later in bytes: bytes b0..b1 of rows of x with row stride `stride`
 * bytes (uint8 images: their pixels). */
void mn_prefetch_bytes_later(const void *x, ptrdiff_t stride, const long long *rows,
                             ptrdiff_t n, ptrdiff_t b0, ptrdiff_t b1);
void mn_prefetch_flush(void);

/* ---- general matrix products (row-major, no transposed storage) -------------------------- */
/* c = a @ b (+ bias per column if bias != NULL)    c (M, N), a (M, K), b (K, N), bias (N) */
void mn_sgemm_nn(float *c, const float *a, const float *b, const float *bias,
                 ptrdiff_t M, ptrdiff_t K, ptrdiff_t N);
/* c = a^T @ b                                      c (M, N), a (K, M), b (K, N)           */
void mn_sgemm_tn(float *c, const float *a, const float *b, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N);
/* c = a @ b^T                                      c (M, N), a (M, K), b (N, K)           */
void mn_sgemm_nt(float *c, const float *a, const float *b, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N);
/* c = a @ b^T on the calling thread only, with row strides: c (M, N) ldc, a (M, K) lda,
 * b (N, K) ldb. Each element gets the same bits as from mn_sgemm_nt with the same K. */
void mn_sgemm_nt_strided(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N);
/* c = A @ b (+ bias) on the calling thread only, for callers that split work across their own
 * threads: c (M, N) with row stride ldc, A(i, k) = a[i * a_rs + k * a_cs] (a row-major (M, K)
 * has (a_rs, a_cs) = (K, 1); one stored transposed as (K, M) has (1, M)), b (K, N) with row
 * stride ldb, bias (N) or NULL. Each element gets the same bits as from mn_sgemm_nn/tn, so a
 * matrix computed in blocks equals the matrix computed whole. */
void mn_sgemm_strided(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                      const float *b, ptrdiff_t ldb, const float *bias,
                      ptrdiff_t M, ptrdiff_t K, ptrdiff_t N);
/* g = A @ b as mn_sgemm_strided (no bias), then w -= learning_rate * g, each tile while it is
 * in registers: one pass instead of a GEMM and an update. w (M, N) has row stride ldw.
 * Returns 1, or 0 if some new w would be NaN or Inf: those elements keep their value. The
 * bits equal mn_sgemm_strided followed by mn_sgd_update. Calling thread only. */
int mn_sgemm_sgd(float *g, ptrdiff_t ldg, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                 const float *b, ptrdiff_t ldb, float *w, ptrdiff_t ldw, float learning_rate,
                 ptrdiff_t M, ptrdiff_t K, ptrdiff_t N);
/* sums[o] = sum over rows b of x[b, o], rows added in order.   sums (C), x (B, C) */
void mn_column_sums(float *sums, const float *x, ptrdiff_t B, ptrdiff_t C);
/* The same for o in [c0, c1) only; other elements of sums are untouched. */
void mn_column_sums_block(float *sums, const float *x, ptrdiff_t c0, ptrdiff_t c1,
                          ptrdiff_t B, ptrdiff_t C);

/* ---- runtime configuration --------------------------------------------------------------- */
/* Name of the SIMD path in use: "avx512", "avx2", "sse2", "neon" or "scalar". */
const char *mn_simd_name(void);
/* Force a path by name. Returns 0 on success, -1 if the name is unknown, -2 if the CPU (or
 * this build) lacks it; the active path is unchanged on failure. NULL re-runs detection. */
int mn_simd_select(const char *name);
/* 1 if the path is compiled in and the CPU supports it. */
int mn_simd_supported(const char *name);
/* Threads used by the kernels: n from mn_set_num_threads if n > 0, else (n <= 0, the
 * default) OpenMP's own setting for the calling thread at the time of the call
 * (omp_get_max_threads(): OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl), clamped to
 * [1, mn_available_cores()]. Always 1 without OpenMP. */
void mn_set_num_threads(int n);
int mn_get_num_threads(void);
/* Cores this process may run on (its CPU affinity; 1 without OpenMP): the most threads any
 * kernel uses. */
int mn_available_cores(void);
/* Cap the threads of kernels called from the calling thread only (0: no cap). Results do not
 * depend on it; it lets a training loop fall back to one thread when the machine is busy. */
void mn_set_thread_cap(int n);
/* Threads a kernel called from this thread would use at most. */
int mn_threads_for_caller(void);
/* Inside a parallel region: this thread's number, the team's size, and a barrier. */
int mn_team_rank(void);
int mn_team_size(void);
void mn_team_barrier(void);
/* 1 if built with OpenMP. */
int mn_openmp_enabled(void);
/* Seconds on a monotonic clock (for throttling periodic work such as signal checks). */
double mn_seconds(void);

#ifdef __cplusplus
}
#endif
#endif /* MN_KERNELS_H */
