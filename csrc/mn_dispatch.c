/* mn_dispatch.c — choose the GEMM path once from CPU detection; hold the thread count. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <string.h>
#include <time.h>
#if defined(_WIN32)
#include <windows.h>
#endif

#include "mn_internal.h"
#include "mn_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_AMD64))
#include <immintrin.h>
#include <intrin.h>
#endif

/* ---- CPU detection ----------------------------------------------------------------------- */

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_AMD64))
/* MSVC has no __builtin_cpu_supports: read CPUID and check the OS saves the wide registers. */
static int msvc_has(const char *what)
{
    int r[4];
    __cpuid(r, 0);
    const int max_leaf = r[0];
    __cpuid(r, 1);
    const int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    if (!osxsave || !avx || max_leaf < 7) return 0;
    const unsigned long long xcr0 = _xgetbv(0);
    int r7[4];
    __cpuidex(r7, 7, 0);
    const int avx2 = (r7[1] >> 5) & 1, avx512f = (r7[1] >> 16) & 1;
    const int ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (strcmp(what, "avx2") == 0) return avx2 && fma && ymm_os;
    if (strcmp(what, "avx512") == 0) return avx512f && fma && zmm_os;
    return 0;
}
#endif

static int cpu_has(const char *name)
{
    if (strcmp(name, "scalar") == 0) return 1;
#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
    if (strcmp(name, "sse2") == 0) return 1; /* part of the x86-64 baseline */
#if defined(_MSC_VER)
    return msvc_has(name);
#else
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
    if (strcmp(name, "neon") == 0) return 1; /* part of the AArch64 baseline */
#endif
    return 0;
}

/* Compiled-in paths, best first. */
static const mn_gemm_table *const paths[] = {
#if defined(MN_HAVE_AVX512)
    &mn_gemm_avx512,
#endif
#if defined(MN_HAVE_AVX2)
    &mn_gemm_avx2,
#endif
#if defined(MN_HAVE_SSE2)
    &mn_gemm_sse2,
#endif
#if defined(MN_HAVE_NEON)
    &mn_gemm_neon,
#endif
    &mn_gemm_scalar,
};
#define N_PATHS (sizeof(paths) / sizeof(paths[0]))

static const mn_gemm_table *active = NULL;

static const mn_gemm_table *best_path(void)
{
    for (size_t i = 0; i < N_PATHS; i++)
        if (cpu_has(paths[i]->name)) return paths[i];
    return &mn_gemm_scalar;
}

const mn_gemm_table *mn_active_gemm(void)
{
    /* A benign race on first use: every thread computes and stores the same pointer. */
    if (!active) active = best_path();
    return active;
}

static const mn_gemm_table *find_path(const char *name)
{
    for (size_t i = 0; i < N_PATHS; i++)
        if (strcmp(paths[i]->name, name) == 0) return paths[i];
    return NULL;
}

static int known_name(const char *name)
{
    static const char *const names[] = {"avx512", "avx2", "sse2", "neon", "scalar"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(names[i], name) == 0) return 1;
    return 0;
}

int mn_simd_supported(const char *name)
{
    return name && find_path(name) != NULL && cpu_has(name);
}

int mn_simd_select(const char *name)
{
    if (!name) {
        active = best_path();
        return 0;
    }
    if (!known_name(name)) return -1;
    if (!mn_simd_supported(name)) return -2;
    active = find_path(name);
    return 0;
}

const char *mn_simd_name(void) { return mn_active_gemm()->name; }

/* ---- the arithmetic limit ---------------------------------------------------------------- */

double mn_thread_seconds(void)
{
#if defined(CLOCK_THREAD_CPUTIME_ID)
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    return mn_seconds();
}

double mn_fma_peak_gflops(int threads, double seconds)
{
    /* Each thread's multiply-adds over its own CPU time, summed: what the cores do while
     * they run this, unaffected by other processes taking turns on them. */
    const mn_gemm_table *t = mn_active_gemm();
    float sink = 0.0f;
    long long iters = 1 << 14; /* calibrate on this thread: rounds for about 20 ms */
    double took;
    for (;;) {
        const double start = mn_thread_seconds();
        t->fma_loop(iters, &sink);
        took = mn_thread_seconds() - start;
        if (took >= 0.02 || iters >= (1LL << 40)) break;
        iters *= 2;
    }
    const long long rounds = (long long)((double)iters * seconds / took) + 1;
    double rate = 0.0;
    /* at most the cores this process may run on, as every other parallel region */
    const int cores = mn_available_cores();
    const int team = threads < 1 ? 1 : threads > cores ? cores : threads;
    (void)team;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) reduction(+ : rate)
#endif
    {
        float mine = 0.0f;
        const double start = mn_thread_seconds();
        const double flops = t->fma_loop(rounds, &mine);
        rate += flops / (mn_thread_seconds() - start) / 1e9 + (mine == 1234.5f ? 1e-9 : 0.0);
    }
    return rate + (sink == 1234.5f ? 1e-9 : 0.0); /* the sinks keep the loops alive */
}


/* ---- threads ----------------------------------------------------------------------------- */

/* The count set by mn_set_num_threads (0: none, so OpenMP's own setting applies). */
static int requested_threads = 0;

/* A cap for kernels called from this thread only (0: none), so one training loop can tune
 * its own thread count without touching other threads' work. */
static MN_THREAD_LOCAL int thread_cap = 0;

void mn_set_num_threads(int n) { requested_threads = n > 0 ? n : 0; }

void mn_set_thread_cap(int n) { thread_cap = n > 0 ? n : 0; }

int mn_threads_for_caller(void)
{
    if (thread_cap == 1) return 1; /* a team member: no need to ask OpenMP */
    const int n = mn_get_num_threads();
    return thread_cap > 0 && thread_cap < n ? thread_cap : n;
}

/* omp_get_num_procs() asks the OS each time (sched_getaffinity: ~0.15 us, a quarter of a
 * small GEMM); the count cannot change under a running process that matters here, so it is
 * read once (a benign race on first use, as for the SIMD path). 0: not read yet. */
static int available_cores = 0;

/* The clamp of mn_get_num_threads when raised above the cores (0: the cores), for tests that
 * check teams larger than the machine has cores give the same bits. */
static int thread_limit = 0;

void mn_set_thread_limit(int n)
{
    thread_limit = n <= 0 ? 0 : n < MN_MAX_THREADS ? n : MN_MAX_THREADS;
}

int mn_available_cores(void)
{
#ifdef _OPENMP
    if (available_cores == 0) available_cores = omp_get_num_procs();
    return available_cores > 0 ? available_cores : 1;
#else
    return 1;
#endif
}

/* The count asked for -- mn_set_num_threads', else OpenMP's setting for the calling thread
 * (omp_get_max_threads: OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl's limits) --
 * clamped to the cores this process may run on: every parallel region and every workspace
 * sized by it then stays bounded (a team larger than the cores only waits at its barriers
 * for threads that are not running). */
int mn_get_num_threads(void)
{
#ifdef _OPENMP
    const int wanted = requested_threads > 0 ? requested_threads : omp_get_max_threads();
    const int limit = thread_limit > 0 ? thread_limit : mn_available_cores();
    return wanted < 1 ? 1 : wanted > limit ? limit : wanted;
#else
    return 1;
#endif
}

int mn_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

double mn_seconds(void)
{
#if defined(_WIN32)
    LARGE_INTEGER freq, now;
    QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (double)now.QuadPart / (double)freq.QuadPart;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

/* ---- thread teams (one parallel region per stretch of an epoch) --------------------------- */

int mn_team_rank(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int mn_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

void mn_team_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}
