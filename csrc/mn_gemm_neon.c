/* mn_gemm_neon.c — AArch64 Advanced SIMD: 4-wide FMA (NEON is baseline on AArch64). */
#include <arm_neon.h>
#define MN_TABLE mn_gemm_neon
#define MN_TABLE_NAME "neon"
typedef float32x4_t VF;
#define VW 4
#define MR_MAX 6
#define NV_MAX 4
#define TI 4
#define TJ 4

static inline float32x4_t neon_loadn(const float *p, int n)
{
    float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return vld1q_f32(tmp);
}
static inline void neon_storen(float *p, float32x4_t v, int n)
{
    float tmp[4];
    vst1q_f32(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}
#define V_ZERO() vdupq_n_f32(0.0f)
#define V_LOAD(p) vld1q_f32(p)
#define V_LOADN(p, n) neon_loadn((p), (n))
#define V_STORE(p, v) vst1q_f32((p), (v))
#define V_STOREN(p, v, n) neon_storen((p), (v), (n))
#define V_SET1(x) vdupq_n_f32(x)
#define V_MADD(acc, a, b) vfmaq_f32((acc), (a), (b))
#define V_ADD(a, b) vaddq_f32((a), (b))
#define V_HSUM(v) vaddvq_f32(v)
/* One vector of an SGD step: w - lr * g, but w where that is NaN or Inf (sets *bad). */
static inline float32x4_t v_sgd(float32x4_t w, float32x4_t g, float32x4_t lr, unsigned *bad)
{
    const float32x4_t v = vsubq_f32(w, vmulq_f32(lr, g));
    const uint32x4_t ok = vceqq_f32(vsubq_f32(v, v), vdupq_n_f32(0.0f));
    *bad |= vminvq_u32(ok) == 0;
    return vbslq_f32(ok, v, w);
}
#define V_SGD(w, g, lr, bad) v_sgd((w), (g), (lr), (bad))
#include "mn_gemm_impl.h"
