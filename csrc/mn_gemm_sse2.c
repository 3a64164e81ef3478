/* mn_gemm_sse2.c — x86-64 baseline: 4-wide SSE2, multiply then add (no FMA). */
#include <emmintrin.h>
#define MN_TABLE mn_gemm_sse2
#define MN_TABLE_NAME "sse2"
typedef __m128 VF;
#define VW 4
#define MR_MAX 4
#define NV_MAX 2
#define TI 2
#define TJ 4

static inline __m128 sse2_loadn(const float *p, int n)
{
    float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return _mm_loadu_ps(tmp);
}
static inline void sse2_storen(float *p, __m128 v, int n)
{
    float tmp[4];
    _mm_storeu_ps(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}
static inline float sse2_hsum(__m128 v)
{
    __m128 hi = _mm_movehl_ps(v, v);                         /* (2, 3, 2, 3) */
    __m128 s = _mm_add_ps(v, hi);                            /* (0+2, 1+3, ...) */
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));              /* (0+2) + (1+3) */
    return _mm_cvtss_f32(s);
}
#define V_ZERO() _mm_setzero_ps()
#define V_LOAD(p) _mm_loadu_ps(p)
#define V_LOADN(p, n) sse2_loadn((p), (n))
#define V_STORE(p, v) _mm_storeu_ps((p), (v))
#define V_STOREN(p, v, n) sse2_storen((p), (v), (n))
#define V_SET1(x) _mm_set1_ps(x)
#define V_MADD(acc, a, b) _mm_add_ps((acc), _mm_mul_ps((a), (b)))
#define V_ADD(a, b) _mm_add_ps((a), (b))
#define V_HSUM(v) sse2_hsum(v)
/* One vector of an SGD step: w - lr * g, but w where that is NaN or Inf (sets *bad). */
static inline __m128 v_sgd(__m128 w, __m128 g, __m128 lr, unsigned *bad)
{
    const __m128 v = _mm_sub_ps(w, _mm_mul_ps(lr, g));
    const __m128 ok = _mm_cmpeq_ps(_mm_sub_ps(v, v), _mm_setzero_ps());
    *bad |= _mm_movemask_ps(ok) != 0xF;
    return _mm_or_ps(_mm_and_ps(ok, v), _mm_andnot_ps(ok, w));
}
#define V_SGD(w, g, lr, bad) v_sgd((w), (g), (lr), (bad))
#include "mn_gemm_impl.h"
