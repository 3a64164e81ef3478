/* mn_internal.h — what the per-ISA GEMM files share with the dispatcher. Not installed. */
#ifndef MN_INTERNAL_H
#define MN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mn_kernels.h"

#if defined(_MSC_VER)
#define MN_ALWAYS_INLINE static __forceinline
#else
#define MN_ALWAYS_INLINE static inline __attribute__((always_inline))
#endif

/* One instruction set's GEMM block kernels. Each computes one block of the output only, so
 * callers can split it across threads; every output element is computed by the same
 * sequence of operations whichever block it falls in, hence the result is bit-identical for
 * any split. */
#if defined(_MSC_VER)
#define MN_THREAD_LOCAL __declspec(thread)
#else
#define MN_THREAD_LOCAL _Thread_local
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MN_PREFETCH_L2(p) __builtin_prefetch((p), 0, 1)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_AMD64))
#include <xmmintrin.h>
#define MN_PREFETCH_L2(p) _mm_prefetch((const char *)(p), _MM_HINT_T1)
#else
#define MN_PREFETCH_L2(p) ((void)(p))
#endif

/* Dataset rows waiting to be fetched into cache, a line at a time, from inside this thread's
 * GEMM loops (mn_prefetch_rows_later): issued all at once, a batch's 1,568 prefetches fill
 * the core's miss buffers and stall it for the whole transfer; spread between multiply-adds,
 * the transfer overlaps them. */
typedef struct {
    const char *base;
    const long long *rows;
    ptrdiff_t n_rows, stride, span; /* row r starts at base + r * stride; fetch span bytes */
    ptrdiff_t row, offset;          /* the next line: byte `offset` of row rows[row] */
} mn_prefetch_queue;

/* This thread's queue, or NULL if it is empty. */
mn_prefetch_queue *mn_pending_prefetches(void);

static inline void mn_prefetch_next_line(mn_prefetch_queue *q)
{
    if (q->row >= q->n_rows) return;
    MN_PREFETCH_L2(q->base + q->rows[q->row] * q->stride + q->offset);
    q->offset += 64;
    if (q->offset >= q->span) {
        q->offset = 0;
        q->row++;
    }
}

/* An SGD step fused into a GEMM: as each tile of c is finished, w[i * ldw + j] -= lr * c[i, j]
 * (elements whose result would be NaN or Inf keep their value, and finite becomes 0). */
typedef struct {
    float *w;
    ptrdiff_t ldw;
    float learning_rate;
    int finite;
} mn_sgd_epilogue;

typedef struct {
    const char *name;
    /* c[i * ldc + j] = sum_k A(i, k) * b[k * ldb + j] (+ bias[j]) for i in [m0, m1) and
     * j in [n0, n1), where A(i, k) = a[i * a_rs + k * a_cs]: (a_rs, a_cs) = (K, 1) for a
     * row-major (M, K), (1, M) for one stored transposed as (K, M). bias may be NULL; so
     * may sgd (else the block's SGD step follows, see mn_sgd_epilogue). */
    void (*gemm_block)(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                       const float *b, ptrdiff_t ldb, const float *bias, ptrdiff_t m0,
                       ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t K,
                       mn_sgd_epilogue *sgd);
    /* c[i * ldc + j] = dot(a[i * lda: +K], b[j * ldb: +K]) for i in [m0, m1), j < N */
    void (*gemm_nt_rows)(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, ptrdiff_t m0, ptrdiff_t m1,
                         ptrdiff_t K, ptrdiff_t N);
    /* params[i] -= lr * grads[i] for i < n, except where the result is NaN or Inf: those
     * keep their value. Returns 0 if there was any such element, else 1. */
    int (*sgd_update)(float *params, const float *grads, float lr, ptrdiff_t n);
    /* 1 if none of x[0..n) is NaN or Inf, else 0. */
    int (*all_finite)(const float *x, ptrdiff_t n);
    /* out = 1 / (1 + e^-x) elementwise (out may be inp).                 out, inp (n) */
    void (*sigmoid_forward)(float *out, const float *inp, ptrdiff_t n);
    /* Row-wise softmax, max-shifted, summed in double (out may be inp).  out, inp (B, C) */
    void (*softmax_forward)(float *out, const float *inp, ptrdiff_t B, ptrdiff_t C);
    /* dst = src (n floats, not overlapping); 1 if none of them is NaN or Inf, else 0. */
    int (*copy_finite)(float *dst, const float *src, ptrdiff_t n);
    /* mn_maxpool2d_forward (the channel loop vectorised for this instruction set) */
    void (*maxpool2d_forward)(float *out, int *argmax, const float *inp, const mn_window *g,
                              ptrdiff_t B);
    /* out = max(inp, 0) (NaN stays NaN); dinp = dout where out > 0, else 0; dinp = dout *
     * out * (1 - out). Elementwise, in place allowed.                          (n) each */
    void (*relu_forward)(float *out, const float *inp, ptrdiff_t n);
    void (*relu_backward)(float *dinp, const float *out, const float *dout, ptrdiff_t n);
    void (*sigmoid_backward)(float *dinp, const float *out, const float *dout, ptrdiff_t n);
    /* mn_dropout_forward with its threshold and scale worked out */
    void (*dropout_forward)(float *out, float *mask, const float *inp, uint64_t threshold,
                            float scale, uint64_t key, ptrdiff_t first, ptrdiff_t n);
    /* out (OH, OW, OC) = one image x (H, W, C; its windows inside it, no padding: g's PT and
     * PL are 0) convolved with w (KH*KW*C, OC), + bias (mn_window.c pads); x's first and
     * last zero_rows rows may be known zeros (their kernel rows are skipped); then ReLU if
     * relu */
    void (*conv_forward)(float *out, const float *x, const float *w, const float *bias,
                         const mn_window *g, ptrdiff_t OC, ptrdiff_t zero_rows, int relu);
    /* rows k0..k1 of dw (KH*KW*C, OC): the kernel gradient over n images x (x_stride floats
     * apart, as conv_forward reads them) and their output gradients dz (n, OH*OW, OC) */
    void (*conv_weight_grad)(float *dw, const float *x, ptrdiff_t x_stride, const float *dz,
                             const mn_window *g, ptrdiff_t OC, ptrdiff_t n, ptrdiff_t k0,
                             ptrdiff_t k1);
    /* iters rounds of a register-resident multiply-add loop; returns its FLOPs */
    double (*fma_loop)(long long iters, float *sink);
    /* batch normalisation over M rows of C channels: see mn_kernels.h */
    void (*bn_stats)(float *mean, float *var, float *invstd, const float *x, double epsilon,
                     ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t M, ptrdiff_t C);
    void (*bn_normalize)(float *out, float *xhat, const float *x, const float *gamma,
                         const float *beta, const float *mean, const float *invstd,
                         ptrdiff_t M, ptrdiff_t C, int relu);
    void (*bn_backward_sums)(float *dgamma, float *dbeta, const float *dout, const float *x,
                             const float *shift, const float *scale, ptrdiff_t c0,
                             ptrdiff_t c1, ptrdiff_t M, ptrdiff_t C);
    void (*bn_input_grad)(float *dinp, const float *dout, const float *x, const float *shift,
                          const float *scale, const float *gamma, const float *invstd,
                          const float *dgamma, const float *dbeta, ptrdiff_t rows,
                          ptrdiff_t M, ptrdiff_t C);
    void (*bn_inference)(float *out, const float *x, const float *gamma, const float *beta,
                         const float *moving_mean, const float *moving_variance,
                         double epsilon, ptrdiff_t M, ptrdiff_t C, int relu);
    /* mn_maxpool2d_backward (the channel loop vectorised for this instruction set) */
    void (*maxpool2d_backward)(float *dinp, const float *dout, const int *argmax,
                               const float *relu_in, const mn_window *g, ptrdiff_t B);
} mn_gemm_table;

extern const mn_gemm_table mn_gemm_scalar;
#if defined(MN_HAVE_SSE2)
extern const mn_gemm_table mn_gemm_sse2;
#endif
#if defined(MN_HAVE_AVX2)
extern const mn_gemm_table mn_gemm_avx2;
#endif
#if defined(MN_HAVE_AVX512)
extern const mn_gemm_table mn_gemm_avx512;
#endif
#if defined(MN_HAVE_NEON)
extern const mn_gemm_table mn_gemm_neon;
#endif

/* The table in use (detects the CPU on first call). */
const mn_gemm_table *mn_active_gemm(void);

/* The most threads mn_set_thread_limit lets mn_get_num_threads give: the largest team the
 * epoch runs (MAX_TEAM in _kernels.pyx). */
#define MN_MAX_THREADS 64
/* For tests: let mn_get_num_threads give up to n threads (at most MN_MAX_THREADS) however
 * many cores there are; 0 puts the clamp back at the cores. */
void mn_set_thread_limit(int n);

#endif /* MN_INTERNAL_H */
