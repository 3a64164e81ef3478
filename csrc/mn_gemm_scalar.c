/* mn_gemm_scalar.c — the plain C path: no intrinsics, one float per "vector". It is the
 * fallback on every CPU and the obviously-correct loop the SIMD paths are tested against. */
#define MN_TABLE mn_gemm_scalar
#define MN_TABLE_NAME "scalar"
typedef float VF;
#define VW 1
#define MR_MAX 4
#define NV_MAX 4
#define TI 2
#define TJ 2
#define V_ZERO() 0.0f
#define V_LOAD(p) (*(p))
#define V_LOADN(p, n) ((n) > 0 ? *(p) : 0.0f)
#define V_STORE(p, v) (*(p) = (v))
#define V_STOREN(p, v, n) do { if ((n) > 0) *(p) = (v); } while (0)
#define V_SET1(x) (x)
#define V_MADD(acc, a, b) ((acc) + (a) * (b))
#define V_ADD(a, b) ((a) + (b))
#define V_RELU(v) ((v) <= 0.0f ? 0.0f : (v)) /* relu_forward's rule */
#define V_HSUM(v) (v)
/* One element of an SGD step: w - lr * g, but w where that is NaN or Inf (sets *bad). */
static inline float v_sgd(float w, float g, float lr, unsigned *bad)
{
    const float v = w - lr * g;
    const int ok = v - v == 0.0f;
    *bad |= !ok;
    return ok ? v : w;
}
#define V_SGD(w, g, lr, bad) v_sgd((w), (g), (lr), (bad))
#include "mn_gemm_impl.h"
