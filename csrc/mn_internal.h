/* mn_internal.h — what the per-ISA GEMM files share with the dispatcher. Not installed. */
#ifndef MN_INTERNAL_H
#define MN_INTERNAL_H

#include <stddef.h>

#if defined(_MSC_VER)
#define MN_ALWAYS_INLINE static __forceinline
#else
#define MN_ALWAYS_INLINE static inline __attribute__((always_inline))
#endif

/* One instruction set's GEMM row-block kernels. Each computes output rows [m0, m1) only, so
 * callers can split rows across threads; every output element is computed by the same
 * sequence of operations whichever block it falls in, hence the result is bit-identical for
 * any split. */
typedef struct {
    const char *name;
    /* c[i, :] = sum_k A(i, k) * b[k, :] (+ bias) for i in [m0, m1),
     * where A(i, k) = a[i * a_rs + k * a_cs]: (a_rs, a_cs) = (K, 1) for a (M, K),
     * (1, M) for a stored transposed as (K, M).      c (M, N), b (K, N), bias (N) or NULL */
    void (*gemm_rows)(float *c, const float *a, const float *b, const float *bias,
                      ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t K, ptrdiff_t N,
                      ptrdiff_t a_rs, ptrdiff_t a_cs);
    /* c[i, j] = dot(a[i, :], b[j, :]) for i in [m0, m1).  c (M, N), a (M, K), b (N, K) */
    void (*gemm_nt_rows)(float *c, const float *a, const float *b,
                         ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t K, ptrdiff_t N);
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

#endif /* MN_INTERNAL_H */
