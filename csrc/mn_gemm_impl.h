/*
 * mn_gemm_impl.h — the GEMM micro-kernels, written once over a tiny vector vocabulary and
 * included by each mn_gemm_<isa>.c after it defines:
 *
 *   MN_TABLE          name of the mn_gemm_table to define (e.g. mn_gemm_avx2)
 *   MN_TABLE_NAME     its string name ("avx2")
 *   VF, VW            vector type and its width in floats
 *   MR_MAX, NV_MAX    register tile of gemm_block: up to MR_MAX (<= 8) rows x NV_MAX (<= 4)
 *                     vectors
 *   TILE_ROWS(nv)     optional: rows of a tile nv vectors wide (<= MR_MAX; default MR_MAX)
 *   TI, TJ            register tile of gemm_nt_rows: TI rows of a x TJ rows of b
 *   V_ZERO()          all lanes 0
 *   V_LOAD(p)         VW floats from p (unaligned)
 *   V_LOADN(p, n)     n < VW floats from p, other lanes 0; reads nothing past p[n - 1]
 *   V_STORE(p, v)     VW floats to p
 *   V_STOREN(p, v, n) the first n < VW lanes to p; writes nothing past p[n - 1]
 *   V_SET1(x)         x in every lane
 *   V_MADD(acc, a, b) acc + a * b (one fused op where the ISA has FMA)
 *   V_ADD(a, b)       a + b
 *   V_HSUM(v)         sum of the lanes, in a fixed order
 *   V_HSUM_4x4(acc, c, ldc)  optional: c[r * ldc + s] = V_HSUM(acc[r][s]) for a 4 x 4 tile,
 *                     bit for bit, faster
 *   V_SGD(w, g, lr, bad)  w - lr * g lane by lane (a multiply, then a subtract), except
 *                     lanes where that is NaN or Inf keep w; sets *bad if there were any
 *
 * Tiles are unrolled by the compiler from constant trip counts (always-inline helpers called
 * with literal sizes), so accumulators live in registers. Every output element sees the same
 * operations whatever tile it lands in: partial tiles only mask lanes, never reorder sums.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mn_internal.h"

/* Rows of a register tile whose panel is nv vectors wide: MR_MAX unless the ISA trades rows
 * for width (its accumulators must fit in the registers). */
#ifndef TILE_ROWS
#define TILE_ROWS(nv) MR_MAX
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define MN_UNROLL _Pragma("GCC unroll 8")
#else
#define MN_UNROLL
#endif

/* ---- c = A @ b (+ bias): broadcast A(i, k), stream row k of b --------------------------- */

/* A queued prefetch (mn_prefetch_rows_later) every this many k of a tile: a power of two. */
#define PREFETCH_EVERY_K 4

/* The fused SGD step after a finished tile: w -= lr * (the tile's values of c), where w is
 * sgd->w at the tile's offset with row stride sgd->ldw. Same operations as sgd_update. */
MN_ALWAYS_INLINE void sgd_tile(const int mr, const int nv, const int full_last,
                               VF acc[MR_MAX][NV_MAX], const float *bias,
                               mn_sgd_epilogue *sgd, ptrdiff_t offset, int tail)
{
    const VF lr = V_SET1(sgd->learning_rate);
    unsigned bad = 0;
    MN_UNROLL for (int r = 0; r < mr; r++) {
        float *wr = sgd->w + offset + r * sgd->ldw;
        MN_UNROLL for (int v = 0; v < nv; v++) {
            const int last = (v == nv - 1) && !full_last;
            VF g = acc[r][v];
            if (bias)
                g = V_ADD(g, last ? V_LOADN(bias + v * VW, tail) : V_LOAD(bias + v * VW));
            if (last)
                V_STOREN(wr + v * VW, V_SGD(V_LOADN(wr + v * VW, tail), g, lr, &bad), tail);
            else
                V_STORE(wr + v * VW, V_SGD(V_LOAD(wr + v * VW), g, lr, &bad));
        }
    }
    if (bad) sgd->finite = 0;
}

MN_ALWAYS_INLINE void rows_tile(const int mr, const int nv, const int full_last,
                                float *c, const float *a, const float *b, const float *bias,
                                ptrdiff_t K, ptrdiff_t ldb, ptrdiff_t ldc,
                                ptrdiff_t a_rs, ptrdiff_t a_cs, int tail, int resume,
                                mn_sgd_epilogue *sgd, ptrdiff_t sgd_offset,
                                mn_prefetch_queue *pf)
{
    /* resume: continue the sums already in c (a later block of k); bias: add it (last block).
     * Either way each element sees one multiply-add per k, in k order, from 0. */
    VF acc[MR_MAX][NV_MAX];
    MN_UNROLL for (int r = 0; r < mr; r++)
        MN_UNROLL for (int v = 0; v < nv; v++) {
            const int last = (v == nv - 1) && !full_last;
            acc[r][v] = !resume ? V_ZERO()
                        : last  ? V_LOADN(c + r * ldc + v * VW, tail)
                                : V_LOAD(c + r * ldc + v * VW);
        }

    for (ptrdiff_t k = 0; k < K; k++) {
        if (pf && (k & (PREFETCH_EVERY_K - 1)) == 0) mn_prefetch_next_line(pf);
        const float *bk = b + k * ldb;
        VF bv[NV_MAX];
        MN_UNROLL for (int v = 0; v < nv - 1; v++) bv[v] = V_LOAD(bk + v * VW);
        bv[nv - 1] = full_last ? V_LOAD(bk + (nv - 1) * VW) : V_LOADN(bk + (nv - 1) * VW, tail);
        const float *ak = a + k * a_cs;
        MN_UNROLL for (int r = 0; r < mr; r++) {
            VF ar = V_SET1(ak[r * a_rs]);
            MN_UNROLL for (int v = 0; v < nv; v++) acc[r][v] = V_MADD(acc[r][v], ar, bv[v]);
        }
    }

    MN_UNROLL for (int r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        MN_UNROLL for (int v = 0; v < nv; v++) {
            const int last = (v == nv - 1) && !full_last;
            VF out = acc[r][v];
            if (bias)
                out = V_ADD(out, last ? V_LOADN(bias + v * VW, tail) : V_LOAD(bias + v * VW));
            if (last)
                V_STOREN(cr + v * VW, out, tail);
            else
                V_STORE(cr + v * VW, out);
        }
    }
    if (sgd) sgd_tile(mr, nv, full_last, acc, bias, sgd, sgd_offset, tail);
}

#define ROWS_ARGS c, a, b, bias, K, ldb, ldc, a_rs, a_cs, tail, resume, sgd, sgd_offset, pf
#define ROWS_CASE(MR, NV)                                                                  \
    case (MR) * 8 + (NV) - 1:                                                                  \
        if ((MR) > TILE_ROWS(NV)) abort(); /* never asked for: not instantiated */            \
        else if (full_last) rows_tile(MR, NV, 1, ROWS_ARGS);                                   \
        else rows_tile(MR, NV, 0, ROWS_ARGS);                                                  \
        break;
#if NV_MAX >= 4
#define ROWS_CASES_NV(MR) ROWS_CASE(MR, 1) ROWS_CASE(MR, 2) ROWS_CASE(MR, 3) ROWS_CASE(MR, 4)
#elif NV_MAX >= 3
#define ROWS_CASES_NV(MR) ROWS_CASE(MR, 1) ROWS_CASE(MR, 2) ROWS_CASE(MR, 3)
#elif NV_MAX >= 2
#define ROWS_CASES_NV(MR) ROWS_CASE(MR, 1) ROWS_CASE(MR, 2)
#else
#define ROWS_CASES_NV(MR) ROWS_CASE(MR, 1)
#endif

/* One tile of mr <= MR_MAX rows and nv <= NV_MAX vectors, the last holding `tail` floats. */
static void rows_tile_any(int mr, int nv, float *c, const float *a, const float *b,
                          const float *bias, ptrdiff_t K, ptrdiff_t ldb, ptrdiff_t ldc,
                          ptrdiff_t a_rs, ptrdiff_t a_cs, int tail, int resume,
                          mn_sgd_epilogue *sgd, ptrdiff_t sgd_offset, mn_prefetch_queue *pf)
{
    const int full_last = tail == VW;
    switch (mr * 8 + nv - 1) {
        ROWS_CASES_NV(1)
#if MR_MAX >= 2
        ROWS_CASES_NV(2)
#endif
#if MR_MAX >= 3
        ROWS_CASES_NV(3)
#endif
#if MR_MAX >= 4
        ROWS_CASES_NV(4)
#endif
#if MR_MAX >= 5
        ROWS_CASES_NV(5)
#endif
#if MR_MAX >= 6
        ROWS_CASES_NV(6)
#endif
#if MR_MAX >= 7
        ROWS_CASES_NV(7)
#endif
#if MR_MAX >= 8
        ROWS_CASES_NV(8)
#endif
        default: abort(); /* unreachable: the caller clamps mr and nv to the tile */
    }
}

/* Packing pays when b's rows are far apart (TLB and cache-set pressure) and many row tiles
 * reuse each packed block; for the narrow layers of a training step it only costs. A long
 * reduction (a conv layer's kernel gradient sums over every pixel of the batch) is taken KC
 * rows of b at a time even unpacked, so each block of a and b stays in cache while all the
 * row tiles pass over it. */
#define KC 256
#define PACK_MIN_ROWS (8 * MR_MAX)
#define PACK_MIN_K 128
#define PACK_MIN_N 256
#define BLOCK_MIN_K (4 * KC)

static void rows_panel(float *c, const float *a, const float *b, const float *bias,
                       ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t K, ptrdiff_t ldb, ptrdiff_t ldc,
                       ptrdiff_t a_rs, ptrdiff_t a_cs, int nv, int tail, int resume,
                       mn_sgd_epilogue *sgd, ptrdiff_t j0)
{
    mn_prefetch_queue *pf = mn_pending_prefetches();
    const int rows = TILE_ROWS(nv);
    for (ptrdiff_t i = m0; i < m1; i += rows) {
        const int mr = (int)(m1 - i < rows ? m1 - i : rows);
        rows_tile_any(mr, nv, c + i * ldc, a + i * a_rs, b, bias, K, ldb, ldc, a_rs, a_cs,
                      tail, resume, sgd, sgd ? i * sgd->ldw + j0 : 0, pf);
        if (pf && pf->row >= pf->n_rows) pf = NULL;
    }
}

/* Vectors per column panel: as wide as the tile allows, but balanced, so a 64-float range is
 * 2 + 2 vectors rather than 3 + 1 (a one-vector panel is bound by its broadcasts). */
static int panel_vectors(ptrdiff_t width)
{
    const ptrdiff_t vectors = (width + VW - 1) / VW;
    const ptrdiff_t panels = (vectors + NV_MAX - 1) / NV_MAX;
    return (int)((vectors + panels - 1) / panels);
}

static void gemm_block(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                       const float *b, ptrdiff_t ldb, const float *bias, ptrdiff_t m0,
                       ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t K,
                       mn_sgd_epilogue *sgd)
{
    if (m1 <= m0 || n1 <= n0) return;
    const ptrdiff_t panel = (ptrdiff_t)panel_vectors(n1 - n0) * VW;
    const int pack = m1 - m0 >= PACK_MIN_ROWS && K >= PACK_MIN_K && ldb >= PACK_MIN_N;
    /* Column panels outside, rows inside: the slice of b under a panel stays in cache while
     * this thread's row tiles stream past it. When many tiles share it, copy KC rows of it
     * at a time into a contiguous block on the stack first (no TLB or cache-set thrashing
     * from b's row stride); the sums continue across blocks in the same k order, so packed
     * and unpacked results are bit-identical. */
    float packed[KC * NV_MAX * VW];
    const ptrdiff_t kb = pack || K >= BLOCK_MIN_K ? KC : K; /* rows of b per block */
    for (ptrdiff_t j0 = n0; j0 < n1; j0 += panel) {
        const ptrdiff_t nc = n1 - j0 < panel ? n1 - j0 : panel;
        const int nv = (int)((nc + VW - 1) / VW);
        const int tail = (int)(nc - (ptrdiff_t)(nv - 1) * VW);
        const float *pbias = bias ? bias + j0 : NULL;
        ptrdiff_t k0 = 0;
        do { /* at least one block, so that K = 0 still writes c = bias (or 0) */
            const ptrdiff_t kc = K - k0 < kb ? K - k0 : kb;
            const float *bk = b + k0 * ldb + j0;
            ptrdiff_t ldbk = ldb;
            if (pack) {
                for (ptrdiff_t k = 0; k < kc; k++)
                    for (ptrdiff_t j = 0; j < nc; j++)
                        packed[k * panel + j] = bk[k * ldb + j];
                bk = packed;
                ldbk = panel;
            }
            const int last_block = k0 + kc == K; /* the sums are complete: bias, then SGD */
            rows_panel(c + j0, a + k0 * a_cs, bk, last_block ? pbias : NULL, m0, m1, kc, ldbk,
                       ldc, a_rs, a_cs, nv, tail, k0 > 0, last_block ? sgd : NULL, j0);
            k0 += kc;
        } while (k0 < K);
    }
}

/* ---- c = a @ b^T: TI x TJ dot products, vectorised along k ------------------------------ */

MN_ALWAYS_INLINE void nt_tile(const int ti, const int tj, float *c, ptrdiff_t ldc,
                              const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                              ptrdiff_t K, mn_prefetch_queue *pf)
{
    VF acc[TI][TJ];
    MN_UNROLL for (int r = 0; r < ti; r++)
        MN_UNROLL for (int s = 0; s < tj; s++) acc[r][s] = V_ZERO();

    ptrdiff_t k = 0;
    for (; k + VW <= K; k += VW) {
        if (pf && ((k / VW) & 3) == 0) mn_prefetch_next_line(pf); /* a queued line every 4 */
        VF av[TI], bv[TJ];
        MN_UNROLL for (int r = 0; r < ti; r++) av[r] = V_LOAD(a + r * lda + k);
        MN_UNROLL for (int s = 0; s < tj; s++) bv[s] = V_LOAD(b + s * ldb + k);
        MN_UNROLL for (int r = 0; r < ti; r++)
            MN_UNROLL for (int s = 0; s < tj; s++) acc[r][s] = V_MADD(acc[r][s], av[r], bv[s]);
    }
    if (k < K) {
        const int n = (int)(K - k);
        VF av[TI], bv[TJ];
        MN_UNROLL for (int r = 0; r < ti; r++) av[r] = V_LOADN(a + r * lda + k, n);
        MN_UNROLL for (int s = 0; s < tj; s++) bv[s] = V_LOADN(b + s * ldb + k, n);
        MN_UNROLL for (int r = 0; r < ti; r++)
            MN_UNROLL for (int s = 0; s < tj; s++) acc[r][s] = V_MADD(acc[r][s], av[r], bv[s]);
    }
#if defined(V_HSUM_4x4) && TI == 4 && TJ == 4
    if (ti == 4 && tj == 4) {
        V_HSUM_4x4(acc, c, ldc); /* the same sums as V_HSUM, all 16 at once */
        return;
    }
#endif
    MN_UNROLL for (int r = 0; r < ti; r++)
        MN_UNROLL for (int s = 0; s < tj; s++) c[r * ldc + s] = V_HSUM(acc[r][s]);
}

/* Below 2 vectors of k a dot product is mostly its horizontal sum: copy b transposed to the
 * stack (up to this many floats) and broadcast instead. */
#define NT_TRANSPOSE_FLOATS 16384

static void gemm_nt_rows(float *c, ptrdiff_t ldc, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, ptrdiff_t m0, ptrdiff_t m1,
                         ptrdiff_t K, ptrdiff_t N)
{
    if (K < 2 * VW && K * N <= NT_TRANSPOSE_FLOATS) {
        /* Chosen by shape alone, so every row block takes this path and the bits do not
         * depend on how rows are split across threads. */
        float bt[NT_TRANSPOSE_FLOATS];
        for (ptrdiff_t j = 0; j < N; j++)
            for (ptrdiff_t k = 0; k < K; k++) bt[k * N + j] = b[j * ldb + k];
        gemm_block(c, ldc, a, lda, 1, bt, N, NULL, m0, m1, 0, N, K, NULL);
        return;
    }
    mn_prefetch_queue *pf = mn_pending_prefetches();
    ptrdiff_t i = m0;
#define NT_TILE(ti, tj) nt_tile((ti), (tj), c + i * ldc + j, ldc, a + i * lda, lda, \
                                b + j * ldb, ldb, K, pf)
    for (; i + TI <= m1; i += TI) {
        ptrdiff_t j = 0;
        for (; j + TJ <= N; j += TJ) NT_TILE(TI, TJ);
        for (; j < N; j++) NT_TILE(TI, 1);
    }
    for (; i < m1; i++) {
        ptrdiff_t j = 0;
        for (; j + TJ <= N; j += TJ) NT_TILE(1, TJ);
        for (; j < N; j++) NT_TILE(1, 1);
    }
#undef NT_TILE
}

/* ---- params -= lr * grads, keeping any element whose new value is not finite ------------ */

static int sgd_update(float *params, const float *grads, float lr, ptrdiff_t n)
{
    /* Plain C so the compiler vectorises it for this file's instruction set; a multiply, then
     * a subtract (no contraction: see setup.py), so every path rounds alike. */
    int finite = 1;
    for (ptrdiff_t i = 0; i < n; i++) {
        const float v = params[i] - lr * grads[i];
        const int ok = v - v == 0.0f; /* false for NaN and +-Inf */
        params[i] = ok ? v : params[i];
        finite &= ok;
    }
    return finite;
}

/* ---- exp, sigmoid, softmax ---------------------------------------------------------------
 * Written as scalar C that the compiler vectorises for this file's instruction set (only
 * +, -, *, /, compares and bit moves, in a fixed order): libm's expf is a call per element. */

/* e^x for x <= 0 (Cephes' expf polynomial, about 2 ulp), down through the subnormals to 0
 * below -104; NaN stays NaN. */
static inline float exp_nonpositive(float x)
{
    x = x < -104.0f ? -104.0f : x; /* a NaN compares false and goes through */
    /* n = round(x / ln 2) by adding 1.5 * 2^23 (exact for |t| < 2^22, on any ISA): the sum's
     * low mantissa bits are then n itself, so no float-to-int conversion (undefined for a
     * NaN) is needed. */
    const float big = x * 1.44269504088896341f + 12582912.0f;
    uint32_t big_bits;
    memcpy(&big_bits, &big, sizeof big_bits);
    const int32_t n = (int32_t)(big_bits - 0x4B400000u);
    const float nf = big - 12582912.0f;
    const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f; /* x - n ln 2, in 2 parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    /* 2^n as exponent bits needs n >= -126: below that, scale by 2^(n + 64), then 2^-64.
     * For a NaN, p is NaN and so is the product, whatever these bits are. */
    const int subnormal = n < -100;
    const uint32_t bits = (uint32_t)(n + (subnormal ? 64 : 0) + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    const float e = p * scale, e_subnormal = e * 5.42101086242752217e-20f;
    return subnormal ? e_subnormal : e; /* both computed: a select, not a branch */
}

static void sigmoid_forward(float *out, const float *inp, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float z = exp_nonpositive(x >= 0.0f ? -x : x); /* e^-|x| <= 1: no overflow */
        out[i] = (x >= 0.0f ? 1.0f : z) / (1.0f + z);        /* one division, no branch */
    }
}

static void softmax_forward(float *out, const float *inp, ptrdiff_t B, ptrdiff_t C)
{
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *x = inp + b * C;
        float *y = out + b * C;
        float m = x[0];
        for (ptrdiff_t c = 1; c < C; c++) m = x[c] > m ? x[c] : m;
        for (ptrdiff_t c = 0; c < C; c++) y[c] = exp_nonpositive(x[c] - m);
        double s = 0.0; /* float32 sums lose ~1e-5 relative over rows of hundreds of classes */
        for (ptrdiff_t c = 0; c < C; c++) s += y[c];
        for (ptrdiff_t c = 0; c < C; c++) y[c] = (float)(y[c] / s);
    }
}

/* ---- relu, and the activations' backward (from the forward output) --------------------- */

static void relu_forward(float *out, const float *inp, ptrdiff_t n)
{
    /* x <= 0 ? 0 : x, so that NaN propagates (NaN <= 0 is false), as np.maximum does */
    for (ptrdiff_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = x <= 0.0f ? 0.0f : x;
    }
}

static void relu_backward(float *dinp, const float *out, const float *dout, ptrdiff_t n)
{
    /* dout read unconditionally, then selected: the compiler vectorises it (dinp may be
     * dout) */
    for (ptrdiff_t i = 0; i < n; i++) {
        const float g = dout[i];
        dinp[i] = out[i] > 0.0f ? g : 0.0f;
    }
}

static void sigmoid_backward(float *dinp, const float *out, const float *dout, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float s = out[i];
        dinp[i] = dout[i] * (s * (1.0f - s));
    }
}

/* ---- dropout --------------------------------------------------------------------------------
 * SplitMix64's output function of the element's counter, compared with the threshold: plain
 * 64-bit integer C, no branch, which the compiler vectorises (emulating the 64-bit multiply
 * where the ISA lacks one). */
static inline uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void dropout_forward(float *restrict out, float *restrict mask,
                            const float *restrict inp, uint64_t threshold, float scale,
                            uint64_t key, ptrdiff_t first, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float m = (mix64(key + (uint64_t)(first + i)) >> 32) >= threshold ? scale : 0.0f;
        mask[i] = m;
        out[i] = inp[i] * m;
    }
}

/* ---- 1 if no element is NaN or Inf ------------------------------------------------------ */

/* 1 if the float at p is NaN or Inf: its exponent bits are all ones. */
static inline uint32_t not_finite_at(const float *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return (u & 0x7f800000u) == 0x7f800000u;
}

static int all_finite(const float *x, ptrdiff_t n)
{
    /* On the bits (exponent all ones), in integer operations the compiler vectorises; no
     * early exit, so the loop streams at memory speed. */
    uint32_t bad = 0;
    for (ptrdiff_t i = 0; i < n; i++) bad |= not_finite_at(x + i);
    return !bad;
}

/* dst = src, and 1 if no element is NaN or Inf: the check rides on the copy. */
static int copy_finite(float *restrict dst, const float *restrict src, ptrdiff_t n)
{
    uint32_t bad = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        bad |= not_finite_at(src + i);
        dst[i] = src[i];
    }
    return !bad;
}

/* ---- max pooling ---------------------------------------------------------------------------
 * Channels last: each window cell is a run of C channels, compared and selected lane by lane
 * (no branch), which the compiler vectorises. The first cell inside the image is taken first;
 * later cells replace it only where strictly larger: the first maximum, as np.argmax. */
/* A 2x2 window inside the image, its cells at offsets 0, dx, dy, dy + dx from `first`: the
 * four cells compared in registers, row-major, the output written once. */
static inline void maxpool_2x2_inside(float *restrict o, int *restrict am,
                                      const float *restrict img, int first, int dx, int dy,
                                      int C)
{
    /* four pointers, not offsets in int arithmetic: the loads stay contiguous vectors */
    const float *restrict p0 = img + first, *restrict p1 = p0 + dx, *restrict p2 = p0 + dy,
                          *restrict p3 = p2 + dx;
    for (int c = 0; c < C; c++) {
        float best = p0[c];
        int at = first + c;
        const float v1 = p1[c], v2 = p2[c], v3 = p3[c];
        at = v1 > best ? first + dx + c : at;
        best = v1 > best ? v1 : best;
        at = v2 > best ? first + dy + c : at;
        best = v2 > best ? v2 : best;
        at = v3 > best ? first + dy + dx + c : at;
        best = v3 > best ? v3 : best;
        o[c] = best;
        am[c] = at;
    }
}

static void maxpool2d_forward(float *restrict out, int *restrict argmax,
                              const float *restrict inp, const mn_window *g, ptrdiff_t B)
{
    const ptrdiff_t C = g->C, n_img = g->H * g->W * C, n_out = g->OH * g->OW * C;
    const int is_2x2 = g->KH == 2 && g->KW == 2;
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *img = inp + b * n_img;
        for (ptrdiff_t oh = 0; oh < g->OH; oh++) {
            const ptrdiff_t h0 = oh * g->SH - g->PT;
            const ptrdiff_t i0 = h0 >= 0 ? 0 : -h0, i1 = h0 + g->KH <= g->H ? g->KH : g->H - h0;
            for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                const ptrdiff_t w0 = ow * g->SW - g->PL;
                const ptrdiff_t j0 = w0 >= 0 ? 0 : -w0, j1 = w0 + g->KW <= g->W ? g->KW : g->W - w0;
                float *restrict o = out + b * n_out + (oh * g->OW + ow) * C;
                int *restrict am = argmax + b * n_out + (oh * g->OW + ow) * C;
                const int first = (int)(((h0 + i0) * g->W + w0 + j0) * C);
                if (is_2x2 && i1 - i0 == 2 && j1 - j0 == 2) {
                    maxpool_2x2_inside(o, am, img, first, (int)C, (int)(g->W * C), (int)C);
                    continue;
                }
                /* int indices in the channel loop: the same width as the floats' lanes */
                for (int c = 0; c < (int)C; c++) {
                    o[c] = img[first + c];
                    am[c] = first + c;
                }
                for (ptrdiff_t di = i0; di < i1; di++)
                    for (ptrdiff_t dj = j0; dj < j1; dj++) {
                        const int at = (int)(((h0 + di) * g->W + w0 + dj) * C);
                        const float *restrict src = img + at;
                        for (int c = 0; c < (int)C; c++) {
                            const float v = src[c];
                            const int take = v > o[c];
                            o[c] = take ? v : o[c];
                            am[c] = take ? at + c : am[c];
                        }
                    }
            }
        }
    }
}

/* Windows that tile the image from its top-left corner (stride = window, no padding, none
 * past the bottom or right edge): each
 * input cell lies in at most one window, so its gradient is written once, never added to.
 * `0 + d` as the scatter below computes it: a -0 gradient gives +0, the same bits. */
MN_ALWAYS_INLINE void maxpool_backward_tiled_rows(float *restrict dinp,
                                                 const float *restrict dout,
                                                 const int *restrict argmax,
                                                 const float *restrict relu_in,
                                                 const mn_window *g, ptrdiff_t B,
                                                 const int relu)
{
    const ptrdiff_t C = g->C, W = g->W, n_img = g->H * W * C, n_out = g->OH * g->OW * C;
    const ptrdiff_t covered_h = g->OH * g->SH, covered_w = g->OW * g->SW;
    for (ptrdiff_t b = 0; b < B; b++) {
        float *restrict img = dinp + b * n_img;
        for (ptrdiff_t oh = 0; oh < g->OH; oh++)
            for (ptrdiff_t di = 0; di < g->KH; di++) {
                const ptrdiff_t h = oh * g->SH + di;
                for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                    const ptrdiff_t o = b * n_out + (oh * g->OW + ow) * C;
                    const float *restrict d = dout + o;
                    const int *restrict am = argmax + o;
                    for (ptrdiff_t dj = 0; dj < g->KW; dj++) {
                        const int at = (int)((h * W + ow * g->SW + dj) * C);
                        float *restrict row = img + at;
                        const float *restrict ri = relu ? relu_in + b * n_img + at : NULL;
                        for (int c = 0; c < (int)C; c++) {
                            /* on the bits, so that the loop vectorises: v where taken, +0 */
                            const float v = 0.0f + d[c];
                            uint32_t u;
                            memcpy(&u, &v, sizeof u);
                            u &= -(uint32_t)(am[c] == at + c);
                            if (relu) /* the relu's output here, relu_backward's test */
                                u &= -(uint32_t)(ri[c] > 0.0f);
                            memcpy(row + c, &u, sizeof u);
                        }
                    }
                }
                memset(img + (h * W + covered_w) * C, 0,
                       (size_t)((W - covered_w) * C) * sizeof(float));
            }
        memset(img + covered_h * W * C, 0,
               (size_t)((g->H - covered_h) * W * C) * sizeof(float));
    }
}

static void maxpool2d_backward(float *dinp, const float *dout, const int *argmax,
                               const float *relu_in, const mn_window *g, ptrdiff_t B)
{
    const ptrdiff_t n_img = g->H * g->W * g->C, n_out = g->OH * g->OW * g->C;
    const int tiles = g->KH > 0 && g->KW > 0 && g->SH == g->KH && g->SW == g->KW &&
                      g->PT == 0 && g->PL == 0 && g->OH * g->SH <= g->H &&
                      g->OW * g->SW <= g->W;
    if (tiles) { /* KH = 0: no window given (fast.maxpool2d_backward without one) */
        if (relu_in)
            maxpool_backward_tiled_rows(dinp, dout, argmax, relu_in, g, B, 1);
        else
            maxpool_backward_tiled_rows(dinp, dout, argmax, NULL, g, B, 0);
        return;
    }
    memset(dinp, 0, (size_t)(B * n_img) * sizeof(float));
    for (ptrdiff_t b = 0; b < B; b++) {
        float *img = dinp + b * n_img;
        for (ptrdiff_t e = 0; e < n_out; e++) {
            const ptrdiff_t i = b * n_out + e;
            if (!relu_in || relu_in[b * n_img + argmax[i]] > 0.0f)
                img[argmax[i]] += dout[i];
        }
    }
}

/* ---- direct convolution: im2col without the patches ----------------------------------------
 * A convolution over channels-last images whose windows lie inside them (the caller pads a
 * copy first when the layer pads, mn_window.c): output pixel (oh, ow) reads input pixels
 * (oh * SH + kh, ow * SW + kw), channels 0..C-1, for every kernel cell (kh, kw). Each output
 * is a chain of multiply-adds from 0 in im2col's patch order (kh, kw, c), then + bias: the
 * bits im2col + gemm_block give, without writing and reading the patches. */

MN_ALWAYS_INLINE void conv_tile(const int mr, const int nv, const int full_last, float *c,
                                const float *a, const float *b, const float *bias,
                                const mn_window *g, ptrdiff_t OC, int tail, ptrdiff_t kh0,
                                ptrdiff_t kh1, int relu)
{
    /* c: the tile's first output pixel (pixels OC floats apart); a: that pixel's window's
     * top-left input cell; b: the kernel as a (KH*KW*C, OC) matrix, at the panel's column.
     * Kernel rows kh0..kh1 only: the others would read rows of zeros. */
    VF acc[MR_MAX][NV_MAX];
    MN_UNROLL for (int r = 0; r < mr; r++)
        MN_UNROLL for (int v = 0; v < nv; v++) acc[r][v] = V_ZERO();
    const ptrdiff_t C = g->C, a_rs = g->SW * C, row = g->W * C, cells = g->KW * C;
    const float *bk = b + kh0 * cells * OC;
    /* A kernel row's cells (kw, c) are contiguous in the window's input row: one loop over
     * j = kw * C + c, in that order (a single short loop when C is 1). */
    for (ptrdiff_t kh = kh0; kh < kh1; kh++) {
        const float *ak = a + kh * row;
        for (ptrdiff_t j = 0; j < cells; j++, bk += OC) {
            VF bv[NV_MAX];
            MN_UNROLL for (int v = 0; v < nv - 1; v++) bv[v] = V_LOAD(bk + v * VW);
            bv[nv - 1] = full_last ? V_LOAD(bk + (nv - 1) * VW)
                                   : V_LOADN(bk + (nv - 1) * VW, tail);
            MN_UNROLL for (int r = 0; r < mr; r++) {
                VF ar = V_SET1(ak[r * a_rs + j]);
                MN_UNROLL for (int v = 0; v < nv; v++)
                    acc[r][v] = V_MADD(acc[r][v], ar, bv[v]);
            }
        }
    }
    MN_UNROLL for (int r = 0; r < mr; r++) {
        float *cr = c + r * OC;
        MN_UNROLL for (int v = 0; v < nv; v++) {
            const int last = (v == nv - 1) && !full_last;
            VF out = acc[r][v];
            if (bias)
                out = V_ADD(out, last ? V_LOADN(bias + v * VW, tail) : V_LOAD(bias + v * VW));
#ifdef V_RELU
            if (relu)
                out = V_RELU(out);
#endif
            if (last)
                V_STOREN(cr + v * VW, out, tail);
            else
                V_STORE(cr + v * VW, out);
        }
    }
    (void)relu; /* without V_RELU, conv_forward applies it after the tile */
}

/* The kernel gradient's register tile: mr rows of the kernel matrix (each an input cell of
 * the window, at offset off[r] from the window's top-left cell) x nv vectors of output
 * channels, summed over every output pixel of n images in order, continuing the sums already
 * in c when resume. Each element is the chain of multiply-adds gemm_block runs over the
 * patches' rows, so the same bits. */
MN_ALWAYS_INLINE void conv_wgrad_tile(const int mr, const int nv, const int full_last,
                                      float *c, const ptrdiff_t *off, const float *x,
                                      ptrdiff_t x_stride, const float *dz, const mn_window *g,
                                      ptrdiff_t OC, ptrdiff_t n, int tail, int resume)
{
    VF acc[MR_MAX][NV_MAX];
    MN_UNROLL for (int r = 0; r < mr; r++)
        MN_UNROLL for (int v = 0; v < nv; v++) {
            const int last = (v == nv - 1) && !full_last;
            acc[r][v] = !resume ? V_ZERO()
                        : last  ? V_LOADN(c + r * OC + v * VW, tail)
                                : V_LOAD(c + r * OC + v * VW);
        }
    const ptrdiff_t C = g->C, row = g->W * C, P = g->OH * g->OW;
    ptrdiff_t o[MR_MAX];
    MN_UNROLL for (int r = 0; r < mr; r++) o[r] = off[r];
    for (ptrdiff_t b = 0; b < n; b++) {
        const float *xb = x + b * x_stride, *dzb = dz + b * P * OC;
        for (ptrdiff_t oh = 0; oh < g->OH; oh++) {
            const float *xr = xb + oh * g->SH * row;
            for (ptrdiff_t ow = 0; ow < g->OW; ow++, dzb += OC) {
                const float *pix = xr + ow * g->SW * C;
                VF bv[NV_MAX];
                MN_UNROLL for (int v = 0; v < nv - 1; v++) bv[v] = V_LOAD(dzb + v * VW);
                bv[nv - 1] = full_last ? V_LOAD(dzb + (nv - 1) * VW)
                                       : V_LOADN(dzb + (nv - 1) * VW, tail);
                MN_UNROLL for (int r = 0; r < mr; r++) {
                    VF ar = V_SET1(pix[o[r]]);
                    MN_UNROLL for (int v = 0; v < nv; v++)
                        acc[r][v] = V_MADD(acc[r][v], ar, bv[v]);
                }
            }
        }
    }
    MN_UNROLL for (int r = 0; r < mr; r++) {
        float *cr = c + r * OC;
        MN_UNROLL for (int v = 0; v < nv; v++) {
            if ((v == nv - 1) && !full_last)
                V_STOREN(cr + v * VW, acc[r][v], tail);
            else
                V_STORE(cr + v * VW, acc[r][v]);
        }
    }
}

#define CONV_CASE(MR, NV)                                                                      \
    case (MR) * 8 + (NV) - 1:                                                                  \
        if ((MR) > TILE_ROWS(NV)) abort(); /* never asked for: not instantiated */            \
        else if (full_last) TILE_CALL(MR, NV, 1);                                              \
        else TILE_CALL(MR, NV, 0);                                                             \
        break;
#if NV_MAX >= 4
#define CONV_CASES_NV(MR) CONV_CASE(MR, 1) CONV_CASE(MR, 2) CONV_CASE(MR, 3) CONV_CASE(MR, 4)
#elif NV_MAX >= 3
#define CONV_CASES_NV(MR) CONV_CASE(MR, 1) CONV_CASE(MR, 2) CONV_CASE(MR, 3)
#elif NV_MAX >= 2
#define CONV_CASES_NV(MR) CONV_CASE(MR, 1) CONV_CASE(MR, 2)
#else
#define CONV_CASES_NV(MR) CONV_CASE(MR, 1)
#endif
#if MR_MAX >= 8
#define CONV_CASES CONV_CASES_NV(1) CONV_CASES_NV(2) CONV_CASES_NV(3) CONV_CASES_NV(4)    \
    CONV_CASES_NV(5) CONV_CASES_NV(6) CONV_CASES_NV(7) CONV_CASES_NV(8)
#elif MR_MAX >= 6
#define CONV_CASES CONV_CASES_NV(1) CONV_CASES_NV(2) CONV_CASES_NV(3) CONV_CASES_NV(4)    \
    CONV_CASES_NV(5) CONV_CASES_NV(6)
#else
#define CONV_CASES CONV_CASES_NV(1) CONV_CASES_NV(2) CONV_CASES_NV(3) CONV_CASES_NV(4)
#endif

static void conv_tile_any(int mr, int nv, float *c, const float *a, const float *b,
                          const float *bias, const mn_window *g, ptrdiff_t OC, int tail,
                          ptrdiff_t kh0, ptrdiff_t kh1, int relu)
{
    const int full_last = tail == VW;
#define TILE_CALL(MR, NV, FULL) \
    conv_tile(MR, NV, FULL, c, a, b, bias, g, OC, tail, kh0, kh1, relu)
    switch (mr * 8 + nv - 1) {
        CONV_CASES
        default: abort(); /* unreachable: the caller clamps mr and nv to the tile */
    }
#undef TILE_CALL
}

static void conv_wgrad_tile_any(int mr, int nv, float *c, const ptrdiff_t *off,
                                const float *x, ptrdiff_t x_stride, const float *dz,
                                const mn_window *g, ptrdiff_t OC, ptrdiff_t n, int tail,
                                int resume)
{
    const int full_last = tail == VW;
#define TILE_CALL(MR, NV, FULL) \
    conv_wgrad_tile(MR, NV, FULL, c, off, x, x_stride, dz, g, OC, n, tail, resume)
    switch (mr * 8 + nv - 1) {
        CONV_CASES
        default: abort();
    }
#undef TILE_CALL
}

/* x <= 0 ? 0 : x over n floats in place: relu_forward's rule (NaN stays NaN, -0 becomes 0);
 * an ISA's V_RELU(v) is the same rule on a vector (the lanes where !(v <= 0) kept). */
static inline void relu_run(float *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) x[i] = x[i] <= 0.0f ? 0.0f : x[i];
}

/* out (OH, OW, OC) = the convolution of one image x (H, W, C, the windows inside it) with
 * the kernel w (KH*KW*C, OC), + bias (unless NULL), then ReLU if `relu` (each tile while it
 * is in cache: the same bits as a pass after): column panels outside (the kernel's slice of
 * a panel stays in cache), then the image's output rows, each in tiles of pixels of equal
 * size but one (26 pixels in tiles of 8: 7, 7, 6, 6 rather than 8, 8, 8, 2).
 * x's first and last `zero_rows` rows may be known zeros: kernel rows that would only read
 * them are skipped (their products add nothing). */
static void conv_forward(float *out, const float *x, const float *w, const float *bias,
                         const mn_window *g, ptrdiff_t OC, ptrdiff_t zero_rows, int relu)
{
    const ptrdiff_t panel = (ptrdiff_t)panel_vectors(OC) * VW, C = g->C;
    for (ptrdiff_t j0 = 0; j0 < OC; j0 += panel) {
        const ptrdiff_t nc = OC - j0 < panel ? OC - j0 : panel;
        const int nv = (int)((nc + VW - 1) / VW);
        const int tail = (int)(nc - (ptrdiff_t)(nv - 1) * VW);
        const ptrdiff_t rows = TILE_ROWS(nv), tiles = (g->OW + rows - 1) / rows;
        for (ptrdiff_t oh = 0; oh < g->OH; oh++) {
            const float *xr = x + oh * g->SH * g->W * C;
            /* kernel rows kh read x's row oh * SH + kh: skip those in the zero rows */
            const ptrdiff_t top = zero_rows - oh * g->SH, bottom = g->H - zero_rows - oh * g->SH;
            const ptrdiff_t kh0 = top > 0 ? top : 0, kh1 = bottom < g->KH ? bottom : g->KH;
            for (ptrdiff_t t = 0, ow = 0; t < tiles; t++) {
                const int mr = (int)((g->OW - ow) / (tiles - t)); /* the larger ones last */
                float *o = out + (oh * g->OW + ow) * OC + j0;
                conv_tile_any(mr, nv, o, xr + ow * g->SW * C, w + j0, bias ? bias + j0 : NULL,
                              g, OC, tail, kh0, kh1, relu);
#ifndef V_RELU /* else applied in registers */
                if (relu)
                    for (int r = 0; r < mr; r++) relu_run(o + r * OC, nc);
#endif
                ow += mr;
            }
        }
    }
}

/* Rows k0..k1 of the kernel gradient dw (KH*KW*C, OC): the sum over the n images x (each
 * x_stride floats, its windows inside it) and their output gradients dz (n, OH*OW, OC) of
 * each window cell times the gradient at its output pixel, images in order. An image at a
 * time (its dz stays in cache while the row tiles pass over it), continuing the sums. */
static void conv_weight_grad(float *dw, const float *x, ptrdiff_t x_stride, const float *dz,
                             const mn_window *g, ptrdiff_t OC, ptrdiff_t n, ptrdiff_t k0,
                             ptrdiff_t k1)
{
    const ptrdiff_t panel = (ptrdiff_t)panel_vectors(OC) * VW, C = g->C, row = g->W * C;
    const ptrdiff_t P = g->OH * g->OW;
    ptrdiff_t b = 0;
    do { /* at least once, so that no images still write dw = 0 */
        const ptrdiff_t nb = n > 0 ? 1 : 0;
        for (ptrdiff_t j0 = 0; j0 < OC; j0 += panel) {
            const ptrdiff_t nc = OC - j0 < panel ? OC - j0 : panel;
            const int nv = (int)((nc + VW - 1) / VW);
            const int tail = (int)(nc - (ptrdiff_t)(nv - 1) * VW);
            const int rows = TILE_ROWS(nv);
            for (ptrdiff_t k = k0; k < k1; k += rows) {
                const int mr = (int)(k1 - k < rows ? k1 - k : rows);
                ptrdiff_t off[MR_MAX];
                for (int r = 0; r < mr; r++) { /* row k + r is input cell (kh, kw, c) */
                    const ptrdiff_t kk = k + r, cell = kk / C;
                    off[r] = (cell / g->KW) * row + (cell % g->KW) * C + kk % C;
                }
                conv_wgrad_tile_any(mr, nv, dw + k * OC + j0, off, x + b * x_stride,
                                    x_stride, dz + b * P * OC + j0, g, OC, nb, tail, b > 0);
            }
        }
        b += nb;
    } while (b < n);
}

/* ---- batch normalisation over M rows of C channels -----------------------------------------
 * Plain C that the compiler vectorises along the channels for this file's instruction set.
 * Each channel's sums run in double over the rows in order, BN_GROUP channels at a time (a
 * row's group is contiguous), so a channel's sums are the same bits whichever thread takes
 * it and whatever the vector width. */
#define BN_GROUP 64

/* Each channel-group routine below is written once over its group width G: called with a
 * literal G (BN_WIDTHS's widths), its per-channel accumulators live in registers; any
 * other width takes the same code with G a variable. The operations per channel are the same
 * whatever G, so the bits are too. */
#define BN_WIDTHS(CALL, g) \
    switch (g) { case 64: CALL(64); break; case 32: CALL(32); break; \
                 case 16: CALL(16); break; case 8: CALL(8); break; default: CALL(g); }

/* The forward's xhat of channel j in row r, recomputed: (x - shift) * scale. With the
 * batch's mean and invstd it is the forward's xhat bit for bit (no FMA: -ffp-contract=off);
 * a stored xhat is read with shift 0 and scale 1, which leave it as it is. */
#define BN_XHAT(xr, shift, scale, j) (((xr)[j] - (shift)[j]) * (scale)[j])

MN_ALWAYS_INLINE void bn_stats_group(float *mean, float *var, float *invstd, const float *x,
                                     double epsilon, ptrdiff_t M, ptrdiff_t C, const int G)
{
    double acc[BN_GROUP];
    for (int j = 0; j < G; j++) acc[j] = 0.0;
    for (ptrdiff_t r = 0; r < M; r++) {
        const float *row = x + r * C;
        MN_UNROLL for (int j = 0; j < G; j++) acc[j] += (double)row[j];
    }
    float mu[BN_GROUP]; /* a local copy: stores to mean cannot alias x */
    for (int j = 0; j < G; j++) {
        mean[j] = mu[j] = (float)(acc[j] / (double)M);
        acc[j] = 0.0;
    }
    for (ptrdiff_t r = 0; r < M; r++) {
        const float *row = x + r * C;
        MN_UNROLL for (int j = 0; j < G; j++) {
            const float d = row[j] - mu[j];
            acc[j] += (double)d * (double)d;
        }
    }
    for (int j = 0; j < G; j++) {
        const double v = acc[j] / (double)M;
        var[j] = (float)v;
        invstd[j] = (float)(1.0 / sqrt(v + epsilon));
    }
}

static void bn_stats(float *mean, float *var, float *invstd, const float *x, double epsilon,
                     ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t M, ptrdiff_t C)
{
    for (ptrdiff_t g0 = c0; g0 < c1; g0 += BN_GROUP) {
        const int g = (int)(c1 - g0 < BN_GROUP ? c1 - g0 : BN_GROUP);
#define BN_STATS(G) bn_stats_group(mean + g0, var + g0, invstd + g0, x + g0, epsilon, M, C, G)
        BN_WIDTHS(BN_STATS, g)
#undef BN_STATS
    }
}

MN_ALWAYS_INLINE void bn_normalize_rows(float *restrict out, float *restrict xhat,
                                        const float *restrict x, const float *gamma,
                                        const float *beta, const float *mean,
                                        const float *invstd, ptrdiff_t M, ptrdiff_t C,
                                        const int relu)
{
    for (ptrdiff_t r = 0; r < M; r++) {
        const float *xr = x + r * C;
        float *orow = out + r * C;
        for (ptrdiff_t c = 0; c < C; c++) {
            const float h = BN_XHAT(xr, mean, invstd, c);
            if (xhat) xhat[r * C + c] = h;
            const float o = gamma[c] * h + beta[c];
            orow[c] = relu && o <= 0.0f ? 0.0f : o; /* relu_forward's, NaN kept */
        }
    }
}

static void bn_normalize(float *restrict out, float *restrict xhat, const float *restrict x,
                         const float *gamma, const float *beta, const float *mean,
                         const float *invstd, ptrdiff_t M, ptrdiff_t C, int relu)
{
    /* four loops, so that each vectorises without a test per element */
    if (xhat && relu) bn_normalize_rows(out, xhat, x, gamma, beta, mean, invstd, M, C, 1);
    else if (xhat) bn_normalize_rows(out, xhat, x, gamma, beta, mean, invstd, M, C, 0);
    else if (relu) bn_normalize_rows(out, NULL, x, gamma, beta, mean, invstd, M, C, 1);
    else bn_normalize_rows(out, NULL, x, gamma, beta, mean, invstd, M, C, 0);
}

MN_ALWAYS_INLINE void bn_sums_group(float *dgamma, float *dbeta, const float *dout,
                                    const float *x, const float *shift, const float *scale,
                                    ptrdiff_t M, ptrdiff_t C, const int G)
{
    double sx[BN_GROUP], sy[BN_GROUP];
    for (int j = 0; j < G; j++) sx[j] = sy[j] = 0.0;
    for (ptrdiff_t r = 0; r < M; r++) {
        const float *d = dout + r * C, *xr = x + r * C;
        MN_UNROLL for (int j = 0; j < G; j++) {
            sy[j] += (double)d[j];
            sx[j] += (double)d[j] * (double)BN_XHAT(xr, shift, scale, j);
        }
    }
    for (int j = 0; j < G; j++) {
        dgamma[j] = (float)sx[j];
        dbeta[j] = (float)sy[j];
    }
}

/* Inference: out = gamma * ((x - moving_mean) * invstd) + beta (relu'd if asked), invstd =
 * 1 / sqrt(moving_variance + epsilon) rounded once to float; bn_normalize_rows's operations. */
static void bn_inference(float *out, const float *x, const float *gamma, const float *beta,
                         const float *moving_mean, const float *moving_variance,
                         double epsilon, ptrdiff_t M, ptrdiff_t C, int relu)
{
    float invstd[BN_GROUP];
    for (ptrdiff_t g0 = 0; g0 < C; g0 += BN_GROUP) {
        const ptrdiff_t g = C - g0 < BN_GROUP ? C - g0 : BN_GROUP;
        for (ptrdiff_t j = 0; j < g; j++)
            invstd[j] = (float)(1.0 / sqrt((double)moving_variance[g0 + j] + epsilon));
        if (g == C) { /* one group: the rows are contiguous */
            bn_normalize(out, NULL, x, gamma, beta, moving_mean, invstd, M, C, relu);
            return;
        }
        /* the group's columns: rows C floats apart, g channels each */
        for (ptrdiff_t r = 0; r < M; r++) {
            if (relu)
                bn_normalize_rows(out + r * C + g0, NULL, x + r * C + g0, gamma + g0,
                                  beta + g0, moving_mean + g0, invstd, 1, g, 1);
            else
                bn_normalize_rows(out + r * C + g0, NULL, x + r * C + g0, gamma + g0,
                                  beta + g0, moving_mean + g0, invstd, 1, g, 0);
        }
    }
}

static void bn_backward_sums(float *dgamma, float *dbeta, const float *dout, const float *x,
                             const float *shift, const float *scale, ptrdiff_t c0,
                             ptrdiff_t c1, ptrdiff_t M, ptrdiff_t C)
{
    for (ptrdiff_t g0 = c0; g0 < c1; g0 += BN_GROUP) {
        const int g = (int)(c1 - g0 < BN_GROUP ? c1 - g0 : BN_GROUP);
#define BN_SUMS(G) bn_sums_group(dgamma + g0, dbeta + g0, dout + g0, x + g0, shift + g0, \
                                 scale + g0, M, C, G)
        BN_WIDTHS(BN_SUMS, g)
#undef BN_SUMS
    }
}

static void bn_input_grad(float *restrict dinp, const float *dout, const float *x,
                          const float *shift, const float *scale, const float *gamma,
                          const float *invstd, const float *dgamma, const float *dbeta,
                          ptrdiff_t rows, ptrdiff_t M, ptrdiff_t C)
{
    float k[BN_GROUP];
    const float m = (float)M;
    for (ptrdiff_t g0 = 0; g0 < C; g0 += BN_GROUP) {
        const ptrdiff_t g = C - g0 < BN_GROUP ? C - g0 : BN_GROUP;
        for (ptrdiff_t j = 0; j < g; j++)
            k[j] = (float)((double)gamma[g0 + j] * (double)invstd[g0 + j] / (double)M);
        const float *db = dbeta + g0, *dg = dgamma + g0, *sh = shift + g0, *sc = scale + g0;
        for (ptrdiff_t r = 0; r < rows; r++) {
            const ptrdiff_t i = r * C + g0;
            const float *d = dout + i, *xr = x + i;
            float *o = dinp + i;
            for (ptrdiff_t j = 0; j < g; j++)
                o[j] = k[j] * ((m * d[j] - db[j]) - BN_XHAT(xr, sh, sc, j) * dg[j]);
        }
    }
}

/* ---- the machine's limit: a register-resident loop of multiply-adds ---------------------- */

/* FMA_CHAINS independent accumulators: enough to fill the pipelines (latency x units). */
#define FMA_CHAINS 12

/* `iters` rounds of FMA_CHAINS vector multiply-adds, no memory traffic; returns their FLOP
 * count (2 per multiply-add, VW lanes each). The result is kept alive through `sink`. */
static double fma_loop(long long iters, float *sink)
{
    VF acc[FMA_CHAINS];
    const VF x = V_SET1(0.999999f), y = V_SET1(1e-7f);
    for (int i = 0; i < FMA_CHAINS; i++) acc[i] = V_SET1((float)i);
    for (long long it = 0; it < iters; it++) {
        /* unrolled whole, so that the chains stay in registers */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 16
#endif
        for (int i = 0; i < FMA_CHAINS; i++) acc[i] = V_MADD(y, acc[i], x);
    }
    VF total = acc[0];
    for (int i = 1; i < FMA_CHAINS; i++) total = V_ADD(total, acc[i]);
    *sink = V_HSUM(total);
    return 2.0 * VW * FMA_CHAINS * (double)iters;
}

const mn_gemm_table MN_TABLE = {MN_TABLE_NAME,     gemm_block,       gemm_nt_rows,
                                 sgd_update,        all_finite,       sigmoid_forward,
                                 softmax_forward,   copy_finite,      maxpool2d_forward,
                                 relu_forward,      relu_backward,    sigmoid_backward,
                                 dropout_forward,   conv_forward,     conv_weight_grad,
                                 fma_loop,          bn_stats,         bn_normalize,
                                 bn_backward_sums,  bn_input_grad,    bn_inference,
                                 maxpool2d_backward};
