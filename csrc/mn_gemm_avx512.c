/* mn_gemm_avx512.c — x86-64 with AVX-512F: 16-wide FMA, lane masks for the tails.
 * Compiled with -mavx512f -mfma (/arch:AVX512); only called after CPU detection says so. */
#include <immintrin.h>
#define MN_TABLE mn_gemm_avx512
#define MN_TABLE_NAME "avx512"
typedef __m512 VF;
#define VW 16
#define MR_MAX 8
#define NV_MAX 4
/* 8 x 3 or 6 x 4 vectors of accumulators: 24 of the 32 registers either way. 64-column
 * blocks (a thread's share of a 128-wide layer) then take one panel, not 48 + 16. */
#define TILE_ROWS(nv) ((nv) >= 4 ? 6 : 8)
#define TI 4
#define TJ 4
#define AVX512_MASK(n) ((__mmask16)((1u << (n)) - 1u))
#define V_ZERO() _mm512_setzero_ps()
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_LOADN(p, n) _mm512_maskz_loadu_ps(AVX512_MASK(n), (p))
#define V_STORE(p, v) _mm512_storeu_ps((p), (v))
#define V_STOREN(p, v, n) _mm512_mask_storeu_ps((p), AVX512_MASK(n), (v))
#define V_SET1(x) _mm512_set1_ps(x)
#define V_MADD(acc, a, b) _mm512_fmadd_ps((a), (b), (acc))
#define V_ADD(a, b) _mm512_add_ps((a), (b))
/* relu_forward's rule, x <= 0 ? 0 : x: the lanes not <= 0 (NaN included) kept, -0 zeroed. */
#define V_RELU(v) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), _CMP_NLE_UQ), (v))
/* The lanes summed in pairs (l, l + 8), then (l, l + 4), (l, l + 2), (0, 1): spelt out rather
 * than _mm512_reduce_add_ps, whose order is the compiler's, because avx512_hsum_4x4 below
 * must give the same bits. */
static inline float avx512_hsum(__m512 v)
{
    const __m256 hi8 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), hi8);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* The 16 sums of a 4 x 4 tile of accumulators at once, stored as c[r * ldc + s] = sum of
 * acc[r][s]: the same pairs as avx512_hsum, but each shuffle and add serves 16 sums (about 50
 * instructions instead of 16 x 8). After each step, lane groups hold: (1) each vector's 8
 * pair sums, two vectors a register; (2) 4 sums, four vectors a register; (3) 2 sums;
 * (4) one sum, lane 4b + t for acc[t][b]. */
static inline void avx512_hsum_4x4(__m512 acc[4][4], float *c, ptrdiff_t ldc)
{
    const __m512 *v = &acc[0][0];
    __m512 u[8], w[4], z[2];
    for (int k = 0; k < 8; k++)
        u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
    for (int m = 0; m < 4; m++)
        w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], 0xDD));
    for (int j = 0; j < 2; j++)
        z[j] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * j], w[2 * j + 1], 0x44),
                             _mm512_shuffle_ps(w[2 * j], w[2 * j + 1], 0xEE));
    const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88),
                                   _mm512_shuffle_ps(z[0], z[1], 0xDD));
    /* lane 4b + t holds acc[t][b]: transpose to row-major, then one row per 128 bits */
    const __m512i rows = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512 g = _mm512_permutexvar_ps(rows, f);
    _mm_storeu_ps(c, _mm512_castps512_ps128(g));
    _mm_storeu_ps(c + ldc, _mm512_extractf32x4_ps(g, 1));
    _mm_storeu_ps(c + 2 * ldc, _mm512_extractf32x4_ps(g, 2));
    _mm_storeu_ps(c + 3 * ldc, _mm512_extractf32x4_ps(g, 3));
}
#define V_HSUM(v) avx512_hsum(v)
#define V_HSUM_4x4(acc, c, ldc) avx512_hsum_4x4((acc), (c), (ldc))
/* One vector of an SGD step: w - lr * g, but w where that is NaN or Inf (sets *bad). */
static inline __m512 v_sgd(__m512 w, __m512 g, __m512 lr, unsigned *bad)
{
    const __m512 v = _mm512_sub_ps(w, _mm512_mul_ps(lr, g));
    const __mmask16 ok = _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ);
    *bad |= ok != (__mmask16)0xFFFF;
    return _mm512_mask_blend_ps(ok, w, v);
}
#define V_SGD(w, g, lr, bad) v_sgd((w), (g), (lr), (bad))
#include "mn_gemm_impl.h"
