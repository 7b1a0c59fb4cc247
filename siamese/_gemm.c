/* C = A @ B in float32 where every element of C is one fused multiply-add chain:
 *
 *     c = (accumulate ? C[i][j] : 0);  for k = 0 .. K-1:  c = fma(A[i][k], B[k][j], c)
 *
 * in that order, rounded once per step (IEEE fma). The result is defined by that formula
 * alone, so every way of computing it gives the same bits: 16 lanes at a time (AVX-512),
 * 8 (AVX2 + FMA) or one (C's fmaf). The instruction set, the blocking and the thread that
 * computes a tile change only the speed. (A BLAS sums each element in pieces whose size is
 * its blocking, which follows the CPU; that is why siamese.gemm does not use one.) A chain
 * may go on over several calls (accumulate), as a convolution's does over its kernel rows.
 *
 * Row i of A starts at a + (a_rows ? a_rows[i] : i * rsa), its k-th element csa further on;
 * row k of B starts at b + (b_rows ? b_rows[k] : k * ldb) and is contiguous; C's rows are ldc
 * apart. Rows by offset let a convolution read its input in place (siamese/gemm.py). Called
 * through ctypes, which lets go of the GIL: each call computes on the calling thread. The
 * Python module around it exists so that setuptools builds and installs the library.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define ISA_SCALAR 1
#define ISA_AVX2 2
#define ISA_AVX512 4

#define MR 6    /* rows of C per tile */
#define KC 128  /* rows of B per pass: a 64-column slab of them stays in L1 */
#define NC 64   /* columns of C per slab */

typedef int64_t i64;

/* ---- one fmaf a step ---- */

#define A_ROW(i) (a + (a_rows ? a_rows[i] : (i) * rsa))
#define B_ROW(p) (b + (b_rows ? b_rows[p] : (p) * ldb))
#define GEMM_ARGS i64 m, i64 n, i64 k, const float *a, i64 rsa, i64 csa, const i64 *a_rows, \
    const float *b, i64 ldb, const i64 *b_rows, float *c, i64 ldc, int accumulate

static void gemm_scalar(GEMM_ARGS) {
    for (i64 i = 0; i < m; i++)
        for (i64 j = 0; j < n; j++) {
            float sum = accumulate ? c[i * ldc + j] : 0.0f;
            for (i64 p = 0; p < k; p++) sum = fmaf(A_ROW(i)[p * csa], B_ROW(p)[j], sum);
            c[i * ldc + j] = sum;
        }
}

/* ---- the tiles: R rows x V vectors of C in registers, named c<row><vector> ----
 * (written out so that the compiler keeps each in a register; arrays of vectors it spills).
 * I names the instruction set: Z for AVX-512, Y for AVX2 + FMA, whose I##_ macros follow. */

#define DECLARE_ROW(I, r) \
    I##_VEC c##r##0 = I##_ZERO(), c##r##1 = I##_ZERO(), c##r##2 = I##_ZERO(), c##r##3 = I##_ZERO();
#define LOAD_ROW(I, r) if (r < R) { \
    if (0 < V) c##r##0 = I##_LOAD(c + r * ldc + 0 * I##_W, 0); \
    if (1 < V) c##r##1 = I##_LOAD(c + r * ldc + 1 * I##_W, 1); \
    if (2 < V) c##r##2 = I##_LOAD(c + r * ldc + 2 * I##_W, 2); \
    if (3 < V) c##r##3 = I##_LOAD(c + r * ldc + 3 * I##_W, 3); }
#define FMA_ROW(I, r) if (r < R) { \
    I##_VEC av = I##_BROADCAST(a##r + p * csa); \
    if (0 < V) c##r##0 = I##_FMA(av, b0, c##r##0); \
    if (1 < V) c##r##1 = I##_FMA(av, b1, c##r##1); \
    if (2 < V) c##r##2 = I##_FMA(av, b2, c##r##2); \
    if (3 < V) c##r##3 = I##_FMA(av, b3, c##r##3); }
#define STORE_ROW(I, r) if (r < R) { \
    if (0 < V) I##_STORE(c + r * ldc + 0 * I##_W, 0, c##r##0); \
    if (1 < V) I##_STORE(c + r * ldc + 1 * I##_W, 1, c##r##1); \
    if (2 < V) I##_STORE(c + r * ldc + 2 * I##_W, 2, c##r##2); \
    if (3 < V) I##_STORE(c + r * ldc + 3 * I##_W, 3, c##r##3); }
#define EACH_ROW(DO, I) DO(I, 0) DO(I, 1) DO(I, 2) DO(I, 3) DO(I, 4) DO(I, 5)

/* One tile's function, tile_<I>_<R>_<V>: the C tile, then k steps of fma, then stored. */
#define TILE(I, R_, V_) \
    __attribute__((target(I##_TARGET))) static void tile_##I##_##R_##_##V_( \
            I##_MASK last, int partial, TILE_ARGS) { \
        enum { R = R_, V = V_ }; \
        const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], \
            *a5 = ar[5]; \
        EACH_ROW(DECLARE_ROW, I) \
        if (load) { EACH_ROW(LOAD_ROW, I) } \
        for (i64 p = 0; p < k; p++) { \
            const float *bp = B_ROW(p); \
            I##_VEC b0 = I##_ZERO(), b1 = I##_ZERO(), b2 = I##_ZERO(), b3 = I##_ZERO(); \
            if (0 < V) b0 = I##_LOAD(bp + 0 * I##_W, 0); \
            if (1 < V) b1 = I##_LOAD(bp + 1 * I##_W, 1); \
            if (2 < V) b2 = I##_LOAD(bp + 2 * I##_W, 2); \
            if (3 < V) b3 = I##_LOAD(bp + 3 * I##_W, 3); \
            EACH_ROW(FMA_ROW, I) \
        } \
        EACH_ROW(STORE_ROW, I) \
    }
#define TILE_ARGS i64 k, const float *const *ar, i64 csa, const float *b, i64 ldb, \
    const i64 *b_rows, float *c, i64 ldc, int load
#define CASE(I, R, V) case R * 8 + V: \
    tile_##I##_##R##_##V(last, partial, k, ar, csa, b, ldb, b_rows, c, ldc, load); break;

/* ---- AVX-512: tiles of up to 6 rows x 4 vectors of 16 ---- */

#define Z_TARGET "avx512f"
#define Z_VEC __m512
#define Z_MASK __mmask16
#define Z_W 16
#define Z_ZERO _mm512_setzero_ps
#define Z_LOAD(ptr, v) \
    (v == V - 1 && partial ? _mm512_maskz_loadu_ps(last, ptr) : _mm512_loadu_ps(ptr))
#define Z_STORE(ptr, v, x) do { \
    if (v == V - 1 && partial) _mm512_mask_storeu_ps(ptr, last, x); \
    else _mm512_storeu_ps(ptr, x); } while (0)
#define Z_BROADCAST(ptr) _mm512_set1_ps(*(ptr))
#define Z_FMA _mm512_fmadd_ps

TILE(Z, 1, 1) TILE(Z, 1, 2) TILE(Z, 1, 3) TILE(Z, 1, 4) TILE(Z, 2, 1) TILE(Z, 2, 2)
TILE(Z, 2, 3) TILE(Z, 2, 4) TILE(Z, 3, 1) TILE(Z, 3, 2) TILE(Z, 3, 3) TILE(Z, 3, 4)
TILE(Z, 4, 1) TILE(Z, 4, 2) TILE(Z, 4, 3) TILE(Z, 4, 4) TILE(Z, 5, 1) TILE(Z, 5, 2)
TILE(Z, 5, 3) TILE(Z, 5, 4) TILE(Z, 6, 1) TILE(Z, 6, 2) TILE(Z, 6, 3) TILE(Z, 6, 4)

__attribute__((target("avx512f"))) static void block512(
        int mr, int nv, __mmask16 last, int partial, TILE_ARGS) {
    switch (mr * 8 + nv) {
        CASE(Z, 1, 1) CASE(Z, 1, 2) CASE(Z, 1, 3) CASE(Z, 1, 4) CASE(Z, 2, 1) CASE(Z, 2, 2)
        CASE(Z, 2, 3) CASE(Z, 2, 4) CASE(Z, 3, 1) CASE(Z, 3, 2) CASE(Z, 3, 3) CASE(Z, 3, 4)
        CASE(Z, 4, 1) CASE(Z, 4, 2) CASE(Z, 4, 3) CASE(Z, 4, 4) CASE(Z, 5, 1) CASE(Z, 5, 2)
        CASE(Z, 5, 3) CASE(Z, 5, 4) CASE(Z, 6, 1) CASE(Z, 6, 2) CASE(Z, 6, 3) CASE(Z, 6, 4)
    }
}

/* The rows of A from row i0 on, at column p0: MR pointers (the last repeated past m). */
static void tile_rows(const float **ar, i64 i0, int mr, i64 p0, const float *a, i64 rsa,
                      i64 csa, const i64 *a_rows) {
    for (int r = 0; r < MR; r++) ar[r] = A_ROW(i0 + (r < mr ? r : mr - 1)) + p0 * csa;
}

__attribute__((target("avx512f"))) static void gemm_avx512(GEMM_ARGS) {
    for (i64 j0 = 0; j0 < n; j0 += NC) {
        i64 cols = n - j0 < NC ? n - j0 : NC;
        int nv = (int)((cols + 15) / 16);
        int tail = (int)(cols - 16 * (nv - 1));
        __mmask16 last = (__mmask16)((1u << tail) - 1u);
        for (i64 p0 = 0; p0 < k || p0 == 0; p0 += KC) {
            i64 kc = k - p0 < KC ? k - p0 : KC;
            int load = accumulate || p0 > 0;
            const float *b_block = b_rows ? b + j0 : b + p0 * ldb + j0;
            const i64 *b_block_rows = b_rows ? b_rows + p0 : NULL;
            for (i64 i0 = 0; i0 < m; i0 += MR) {
                int mr = (int)(m - i0 < MR ? m - i0 : MR);
                const float *ar[MR];
                tile_rows(ar, i0, mr, p0, a, rsa, csa, a_rows);
                block512(mr, nv, last, tail < 16, kc, ar, csa, b_block, ldb, b_block_rows,
                         c + i0 * ldc + j0, ldc, load);
            }
            if (k == 0) break;
        }
    }
}

/* ---- AVX2 + FMA: tiles of up to 6 rows x 2 vectors of 8 ---- */

#define Y_TARGET "avx2,fma"
#define Y_VEC __m256
#define Y_MASK __m256i
#define Y_W 8
#define Y_ZERO _mm256_setzero_ps
#define Y_LOAD(ptr, v) \
    (v == V - 1 && partial ? _mm256_maskload_ps(ptr, last) : _mm256_loadu_ps(ptr))
#define Y_STORE(ptr, v, x) do { \
    if (v == V - 1 && partial) _mm256_maskstore_ps(ptr, last, x); \
    else _mm256_storeu_ps(ptr, x); } while (0)
#define Y_BROADCAST(ptr) _mm256_broadcast_ss(ptr)
#define Y_FMA _mm256_fmadd_ps

TILE(Y, 1, 1) TILE(Y, 1, 2) TILE(Y, 2, 1) TILE(Y, 2, 2) TILE(Y, 3, 1) TILE(Y, 3, 2)
TILE(Y, 4, 1) TILE(Y, 4, 2) TILE(Y, 5, 1) TILE(Y, 5, 2) TILE(Y, 6, 1) TILE(Y, 6, 2)

__attribute__((target("avx2,fma"))) static void block256(
        int mr, int nv, __m256i last, int partial, TILE_ARGS) {
    switch (mr * 8 + nv) {
        CASE(Y, 1, 1) CASE(Y, 1, 2) CASE(Y, 2, 1) CASE(Y, 2, 2) CASE(Y, 3, 1) CASE(Y, 3, 2)
        CASE(Y, 4, 1) CASE(Y, 4, 2) CASE(Y, 5, 1) CASE(Y, 5, 2) CASE(Y, 6, 1) CASE(Y, 6, 2)
    }
}

__attribute__((target("avx2,fma"))) static void gemm_avx2(GEMM_ARGS) {
    for (i64 j0 = 0; j0 < n; j0 += NC) {
        i64 slab = n - j0 < NC ? n - j0 : NC;
        for (i64 p0 = 0; p0 < k || p0 == 0; p0 += KC) {
            i64 kc = k - p0 < KC ? k - p0 : KC;
            int load = accumulate || p0 > 0;
            const i64 *b_block_rows = b_rows ? b_rows + p0 : NULL;
            for (i64 i0 = 0; i0 < m; i0 += MR) {
                int mr = (int)(m - i0 < MR ? m - i0 : MR);
                const float *ar[MR];
                tile_rows(ar, i0, mr, p0, a, rsa, csa, a_rows);
                for (i64 j1 = j0; j1 < j0 + slab; j1 += 16) {
                    i64 cols = j0 + slab - j1 < 16 ? j0 + slab - j1 : 16;
                    int nv = (int)((cols + 7) / 8);
                    int tail = (int)(cols - 8 * (nv - 1));
                    __m256i last = _mm256_cmpgt_epi32(
                        _mm256_set1_epi32(tail), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                    const float *b_block = b_rows ? b + j1 : b + p0 * ldb + j1;
                    block256(mr, nv, last, tail < 8, kc, ar, csa, b_block, ldb, b_block_rows,
                             c + i0 * ldc + j1, ldc, load);
                }
            }
            if (k == 0) break;
        }
    }
}

/* ---- what ctypes calls ---- */

/* The sha256 of the source this library was built from (setup.py defines it). */
const char *siamese_gemm_source(void) { return SOURCE_SHA256; }

/* The instruction sets this CPU runs: ISA_SCALAR always, ISA_AVX2 with FMA, ISA_AVX512. */
int siamese_gemm_isas(void) {
    __builtin_cpu_init();
    int isas = ISA_SCALAR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas |= ISA_AVX2;
    if (__builtin_cpu_supports("avx512f")) isas |= ISA_AVX512;
    return isas;
}

/* C[m x n] = A[m x k] @ B[k x n] by `isa` (one that siamese_gemm_isas names). */
void siamese_gemm(int isa, GEMM_ARGS) {
    if (m <= 0 || n <= 0) return;
    if (isa == ISA_AVX512)
        gemm_avx512(m, n, k, a, rsa, csa, a_rows, b, ldb, b_rows, c, ldc, accumulate);
    else if (isa == ISA_AVX2)
        gemm_avx2(m, n, k, a, rsa, csa, a_rows, b, ldb, b_rows, c, ldc, accumulate);
    else
        gemm_scalar(m, n, k, a, rsa, csa, a_rows, b, ldb, b_rows, c, ldc, accumulate);
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gemm", NULL, -1, NULL, NULL, NULL, NULL,
                                     NULL};

PyMODINIT_FUNC PyInit__gemm(void) { return PyModule_Create(&module); }
