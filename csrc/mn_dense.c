/* mn_dense.c — dense layers and GEMM entry points: split output rows across threads and call
 * the active path's row-block kernels. */
#include "mn_internal.h"
#include "mn_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many multiply-adds a parallel region costs more than it saves. */
#define MN_PARALLEL_MIN_WORK (1 << 16)

static int threads_for(ptrdiff_t rows, ptrdiff_t work)
{
    int nt = mn_threads_for_caller();
    if (work < MN_PARALLEL_MIN_WORK) return 1;
    if (nt > rows) nt = (int)rows;
    return nt < 1 ? 1 : nt;
}

/* Rows [*m0, *m1) of M for thread t of nt: contiguous, sizes differing by at most one. */
static void row_range(ptrdiff_t M, int t, int nt, ptrdiff_t *m0, ptrdiff_t *m1)
{
    const ptrdiff_t base = M / nt, extra = M % nt;
    *m0 = t * base + (t < extra ? t : extra);
    *m1 = *m0 + base + (t < extra ? 1 : 0);
}

/* c = A @ b (+ bias), A(i, k) = a[i * a_rs + k * a_cs]. */
static void gemm_parallel(float *c, const float *a, const float *b, const float *bias,
                          ptrdiff_t M, ptrdiff_t K, ptrdiff_t N, ptrdiff_t a_rs, ptrdiff_t a_cs)
{
    const mn_gemm_table *g = mn_active_gemm();
    const int nt = threads_for(M, M * K * N);
    if (nt == 1) {
        g->gemm_block(c, N, a, a_rs, a_cs, b, N, bias, 0, M, 0, N, K, NULL);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        ptrdiff_t m0, m1;
        row_range(M, omp_get_thread_num(), omp_get_num_threads(), &m0, &m1);
        g->gemm_block(c, N, a, a_rs, a_cs, b, N, bias, m0, m1, 0, N, K, NULL);
    }
#endif
}

void mn_sgemm_nn(float *c, const float *a, const float *b, const float *bias,
                 ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    gemm_parallel(c, a, b, bias, M, K, N, K, 1);
}

void mn_sgemm_tn(float *c, const float *a, const float *b, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    gemm_parallel(c, a, b, NULL, M, K, N, 1, M);
}

void mn_sgemm_nt(float *c, const float *a, const float *b, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    const mn_gemm_table *g = mn_active_gemm();
    const int nt = threads_for(M, M * K * N);
    if (nt == 1) {
        g->gemm_nt_rows(c, N, a, K, b, K, 0, M, K, N);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        ptrdiff_t m0, m1;
        row_range(M, omp_get_thread_num(), omp_get_num_threads(), &m0, &m1);
        g->gemm_nt_rows(c, N, a, K, b, K, m0, m1, K, N);
    }
#endif
}

void mn_sgemm_nt_strided(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    mn_active_gemm()->gemm_nt_rows(c, ldc, a, lda, b, ldb, 0, M, K, N);
}

void mn_dense_forward(float *out, const float *inp, const float *weight, const float *bias,
                      ptrdiff_t B, ptrdiff_t C, ptrdiff_t OC)
{
    mn_sgemm_nn(out, inp, weight, bias, B, C, OC); /* out (B, OC) */
}

void mn_sgemm_strided(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                      const float *b, ptrdiff_t ldb, const float *bias,
                      ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    mn_active_gemm()->gemm_block(c, ldc, a, a_rs, a_cs, b, ldb, bias, 0, M, 0, N, K, NULL);
}

int mn_sgemm_sgd(float *g, ptrdiff_t ldg, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                 const float *b, ptrdiff_t ldb, float *w, ptrdiff_t ldw, float learning_rate,
                 ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    mn_sgd_epilogue sgd = {w, ldw, learning_rate, 1};
    mn_active_gemm()->gemm_block(g, ldg, a, a_rs, a_cs, b, ldb, NULL, 0, M, 0, N, K, &sgd);
    return sgd.finite;
}

/* sums[o] = sum over b of x[b, o] for o in [c0, c1), rows added in order. */
void mn_column_sums_block(float *sums, const float *x, ptrdiff_t c0, ptrdiff_t c1,
                          ptrdiff_t B, ptrdiff_t C)
{
    for (ptrdiff_t o = c0; o < c1; o++) sums[o] = 0.0f;
    for (ptrdiff_t b = 0; b < B; b++)
        for (ptrdiff_t o = c0; o < c1; o++) sums[o] += x[b * C + o];
}

void mn_column_sums(float *sums, const float *x, ptrdiff_t B, ptrdiff_t C)
{
    mn_column_sums_block(sums, x, 0, C, B, C);
}

void mn_dense_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const float *weight,
                       ptrdiff_t B, ptrdiff_t C, ptrdiff_t OC)
{
    if (dinp) mn_sgemm_nt(dinp, dout, weight, B, OC, C);   /* (B, OC) @ (C, OC)^T -> (B, C) */
    mn_sgemm_tn(dweight, inp, dout, C, B, OC);             /* (B, C)^T @ (B, OC) -> (C, OC) */
    if (dbias) mn_column_sums(dbias, dout, B, OC);
}

/* Elementwise, so any split gives the same bits; below this many floats one thread wins. */
#define MN_PARALLEL_MIN_SGD (1 << 15)

static int sgd_range(float *params, const float *grads, float lr, ptrdiff_t i0, ptrdiff_t i1)
{
    return mn_active_gemm()->sgd_update(params + i0, grads + i0, lr, i1 - i0);
}

int mn_sgd_update(float *params, const float *grads, float learning_rate, ptrdiff_t n)
{
    int nt = n >= MN_PARALLEL_MIN_SGD ? mn_threads_for_caller() : 1;
    if (nt <= 1) return sgd_range(params, grads, learning_rate, 0, n);
    int finite = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(&& : finite)
    {
        ptrdiff_t i0, i1;
        row_range(n, omp_get_thread_num(), omp_get_num_threads(), &i0, &i1);
        finite = sgd_range(params, grads, learning_rate, i0, i1);
    }
#endif
    return finite;
}

void mn_sigmoid_forward(float *out, const float *inp, ptrdiff_t n)
{
    mn_active_gemm()->sigmoid_forward(out, inp, n);
}

void mn_relu_forward(float *out, const float *inp, ptrdiff_t n)
{
    mn_active_gemm()->relu_forward(out, inp, n);
}

void mn_relu_backward(float *dinp, const float *out, const float *dout, ptrdiff_t n)
{
    mn_active_gemm()->relu_backward(dinp, out, dout, n);
}

void mn_sigmoid_backward(float *dinp, const float *out, const float *dout, ptrdiff_t n)
{
    mn_active_gemm()->sigmoid_backward(dinp, out, dout, n);
}

void mn_dropout_forward(float *out, float *mask, const float *inp, double rate,
                        unsigned long long key, ptrdiff_t first, ptrdiff_t n)
{
    const uint64_t threshold = (uint64_t)(rate * 4294967296.0);
    const float one = 1.0f, scale = one / (one - (float)rate);
    mn_active_gemm()->dropout_forward(out, mask, inp, threshold, scale, key, first, n);
}

void mn_softmax_forward(float *out, const float *inp, ptrdiff_t B, ptrdiff_t C)
{
    mn_active_gemm()->softmax_forward(out, inp, B, C);
}

/* A scan streams memory: one thread per this many floats, at most. */
#define MN_FLOATS_PER_SCAN_THREAD (1 << 20)

int mn_all_finite(const float *x, ptrdiff_t n)
{
    const mn_gemm_table *g = mn_active_gemm();
    ptrdiff_t nt = mn_threads_for_caller();
    if (nt > n / MN_FLOATS_PER_SCAN_THREAD) nt = n / MN_FLOATS_PER_SCAN_THREAD;
    if (nt <= 1) return g->all_finite(x, n);
    int finite = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nt) reduction(&& : finite)
    {
        ptrdiff_t i0, i1;
        row_range(n, omp_get_thread_num(), omp_get_num_threads(), &i0, &i1);
        finite = g->all_finite(x + i0, i1 - i0);
    }
#endif
    return finite;
}

int mn_copy_finite(float *dst, const float *src, ptrdiff_t n)
{
    return mn_active_gemm()->copy_finite(dst, src, n);
}

void mn_prefetch_rows(const float *x, const long long *rows, ptrdiff_t n, ptrdiff_t width)
{
    mn_prefetch_rows_later(x, rows, n, width);
    mn_prefetch_flush();
}

static MN_THREAD_LOCAL mn_prefetch_queue pending;

mn_prefetch_queue *mn_pending_prefetches(void)
{
    return pending.row < pending.n_rows ? &pending : NULL;
}

static void queue_rows(const void *base, const long long *rows, ptrdiff_t n,
                       ptrdiff_t stride, ptrdiff_t span)
{
    pending.base = (const char *)base;
    pending.rows = rows;
    pending.n_rows = span > 0 ? n : 0;
    pending.stride = stride;
    pending.span = span;
    pending.row = 0;
    pending.offset = 0;
}

void mn_prefetch_rows_later(const float *x, const long long *rows, ptrdiff_t n,
                            ptrdiff_t width)
{
    queue_rows(x, rows, n, width * (ptrdiff_t)sizeof(float), width * (ptrdiff_t)sizeof(float));
}

void mn_prefetch_columns_later(const float *x, ptrdiff_t ld, const long long *rows,
                               ptrdiff_t n, ptrdiff_t c0, ptrdiff_t c1)
{
    queue_rows(x + c0, rows, n, ld * (ptrdiff_t)sizeof(float),
               (c1 - c0) * (ptrdiff_t)sizeof(float));
}

void mn_prefetch_bytes_later(const void *x, ptrdiff_t stride, const long long *rows,
                             ptrdiff_t n, ptrdiff_t b0, ptrdiff_t b1)
{
    queue_rows((const char *)x + b0, rows, n, stride, b1 - b0);
}

void mn_prefetch_flush(void)
{
    /* On a local copy: each access to a thread-local variable of a shared library may be a
     * call (__tls_get_addr), which cost as much as the prefetch itself. */
    mn_prefetch_queue q = pending;
    while (q.row < q.n_rows) mn_prefetch_next_line(&q);
    pending.row = q.row;
    pending.offset = q.offset;
}
