/* mn_gemm_avx512.c — x86-64 with AVX-512F: 16-wide FMA, lane masks for the tails.
 * Compiled with -mavx512f -mfma (/arch:AVX512); only called after CPU detection says so. */
#include <immintrin.h>
#define MN_TABLE mn_gemm_avx512
#define MN_TABLE_NAME "avx512"
typedef __m512 VF;
#define VW 16
#define MR_MAX 8
#define NV_MAX 3
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
#define V_HSUM(v) _mm512_reduce_add_ps(v)
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
