/*
 * use_kernels.c — a C program that uses mnistnet's kernels through mn_kernels.h and the static
 * library the package installs (tests/test_embedding.py builds and checks it).
 *
 *   INC=$(python -c "import mnistnet; print(mnistnet.get_include())")
 *   LIB=$(python -c "import mnistnet; print(mnistnet.get_library_dir())")
 *   cc -O2 use_kernels.c -I"$INC" "$LIB/libmn_kernels.a" -fopenmp -lm -o use_kernels
 *   ./use_kernels [avx512|avx2|sse2|neon|scalar]
 *
 * (-fopenmp only if mnistnet.show_config() says openmp: on.) Inputs are small multiples of
 * 1/8 and 1/16, so every product and partial sum is exact in float32: the results do not
 * depend on the SIMD path or the summation order, and the test compares them exactly.
 *
 * Output, one item per line: "simd NAME", "supported NAME...", "openmp 0|1", "threads N",
 * then "dense B C OC" and "sgemm M K N", each followed by a line of the row-major results.
 * Exit status: 0, or 2 if the requested path is unknown or unsupported here.
 */
#include <stdio.h>
#include <stdlib.h>

#include "mn_kernels.h"

/* The test builds the same inputs with NumPy from these formulas. */
static void fill(float *x, ptrdiff_t n, int mul, int mod, float scale)
{
    for (ptrdiff_t i = 0; i < n; i++) x[i] = (float)((i * mul) % mod - mod / 2) * scale;
}

static void print_matrix(const char *name, const float *x, ptrdiff_t rows, ptrdiff_t inner,
                         ptrdiff_t cols)
{
    printf("%s %td %td %td\n", name, rows, inner, cols);
    for (ptrdiff_t i = 0; i < rows * cols; i++) printf(i ? " %.9g" : "%.9g", x[i]);
    printf("\n");
}

int main(int argc, char **argv)
{
    static const char *const paths[] = {"avx512", "avx2", "sse2", "neon", "scalar"};
    if (argc > 1 && mn_simd_select(argv[1]) != 0) {
        fprintf(stderr, "use_kernels: SIMD path %s is not available here\n", argv[1]);
        return 2;
    }
    printf("simd %s\nsupported", mn_simd_name());
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (mn_simd_supported(paths[i])) printf(" %s", paths[i]);
    printf("\nopenmp %d\nthreads %d\n", mn_openmp_enabled(), mn_get_num_threads());

    /* A dense layer: out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC). Sizes that are
     * not multiples of any vector width, so every path's tails run. */
    enum { B = 5, C = 33, OC = 20 };
    float inp[B * C], weight[C * OC], bias[OC], out[B * OC];
    fill(inp, B * C, 7, 13, 0.125f);
    fill(weight, C * OC, 5, 11, 0.0625f);
    fill(bias, OC, 1, 3, 0.5f);
    mn_dense_forward(out, inp, weight, bias, B, C, OC);
    print_matrix("dense", out, B, C, OC);

    /* A GEMM large enough to be split across threads: c (M, N) = a (M, K) @ b (K, N). */
    const ptrdiff_t M = 64, K = 70, N = 37;
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N);
    float *c = malloc(sizeof(float) * M * N);
    if (!a || !b || !c) return 1;
    fill(a, M * K, 3, 9, 0.125f);
    fill(b, K * N, 11, 7, 0.0625f);
    mn_sgemm_nn(c, a, b, NULL, M, K, N);
    print_matrix("sgemm", c, M, K, N);
    free(a);
    free(b);
    free(c);
    return 0;
}
