/* mn_gemm_avx2.c — x86-64 with AVX2 and FMA: 8-wide, fused multiply-add.
 * Compiled with -mavx2 -mfma (/arch:AVX2); only called after CPU detection says so. */
#include <immintrin.h>
#define MN_TABLE mn_gemm_avx2
#define MN_TABLE_NAME "avx2"
typedef __m256 VF;
#define VW 8
#define MR_MAX 6
#define NV_MAX 2
#define TI 2
#define TJ 4

static inline __m256i avx2_mask(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline float avx2_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#define V_ZERO() _mm256_setzero_ps()
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_LOADN(p, n) _mm256_maskload_ps((p), avx2_mask(n))
#define V_STORE(p, v) _mm256_storeu_ps((p), (v))
#define V_STOREN(p, v, n) _mm256_maskstore_ps((p), avx2_mask(n), (v))
#define V_SET1(x) _mm256_set1_ps(x)
#define V_MADD(acc, a, b) _mm256_fmadd_ps((a), (b), (acc))
#define V_ADD(a, b) _mm256_add_ps((a), (b))
/* relu_forward's rule, x <= 0 ? 0 : x: the lanes not <= 0 (NaN included) kept, -0 zeroed. */
#define V_RELU(v) _mm256_and_ps(_mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_NLE_UQ), (v))
#define V_HSUM(v) avx2_hsum(v)
/* One vector of an SGD step: w - lr * g, but w where that is NaN or Inf (sets *bad). */
static inline __m256 v_sgd(__m256 w, __m256 g, __m256 lr, unsigned *bad)
{
    const __m256 v = _mm256_sub_ps(w, _mm256_mul_ps(lr, g));
    const __m256 ok = _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_EQ_OQ);
    *bad |= _mm256_movemask_ps(ok) != 0xFF;
    return _mm256_blendv_ps(w, v, ok);
}
#define V_SGD(w, g, lr, bad) v_sgd((w), (g), (lr), (bad))
#include "mn_gemm_impl.h"
