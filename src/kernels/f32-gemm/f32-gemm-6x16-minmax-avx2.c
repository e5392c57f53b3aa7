/* fc_f32_gemm_minmax_ukernel_6x16__avx2: a 6 x 16 tile held in 12 ymm accumulators.
 * Per k: two 8-wide loads of B (a packed panel, or rows read in place), six broadcasts of the
 * A panel, twelve FMAs (broadcasting from registers with in-lane shuffles instead measured half
 * as fast on Zen 3: the shuffles compete with the FMAs for their pipes). Edge tiles of 8 or
 * fewer columns use one vector; masked loads and stores (which do not fault on masked-off
 * lanes) keep them inside the matrix.
 * Contract: src/include/fc_kernels.h. Compiled with -mavx2 -mfma. */
#include <immintrin.h>

#include "fc_kernels.h"

#define MR 6
#define NR 16
#define FC_INLINE static inline __attribute__((always_inline))

/* All-ones in the lanes of the first `n` columns (n may exceed 8). */
static __m256i lanes(size_t n) {
  const int v = n > 8 ? 8 : (int)n;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* `nv` vectors (1 or 2) of columns, selected by m0 and m1. Full tiles pass `full`, which keeps
 * masks out of their loop and stores. Only the first `mr` (a constant, rows <= mr <= MR) rows
 * are computed: an edge tile of a few rows costs its own rows, not six. */
FC_INLINE void tile(size_t rows, size_t kc, const float* a, const float* b,
                    const ptrdiff_t* b_offsets, float* c, size_t ldc, const fc_gemm_epilogue* ep,
                    __m256i m0, __m256i m1, const int nv, const int full, const int mr) {
  __m256 lo[MR], hi[MR];
#pragma GCC unroll 6
  for (int r = 0; r < mr; r++) {
    /* C's rows are read or written only after the kc loop: fetching them now keeps a cache
     * miss on C (a cold output, or a residual) from stalling the end of the tile. A tile of a
     * short K (kc = 64: about 400 cycles) is shorter than a miss to memory, so the line two
     * tiles further along the row (where the driver goes next) is fetched too: one thread,
     * per turn, ResNet-50 x0.94-0.97 (two threads x0.95), MobileNetV2 x0.97, GoogLeNet x0.97,
     * VGG-16 x0.97 (Zen 3); the next tile's line instead measured x1.03, the lines two and
     * three tiles ahead x1.04. */
    if ((size_t)r < rows) {
      _mm_prefetch((const char*)(c + (size_t)r * ldc), _MM_HINT_T0);
      _mm_prefetch((const char*)(c + (size_t)r * ldc + 8 * nv - 1), _MM_HINT_T0);
      _mm_prefetch((const char*)(c + (size_t)r * ldc + 2 * NR), _MM_HINT_T0);
    }
    lo[r] = _mm256_setzero_ps();
    hi[r] = _mm256_setzero_ps();
  }
  for (size_t k = 0; k < kc; k++) {
    const float* bk = b_offsets ? b + b_offsets[k] : b + k * NR;
    /* The A panels follow each other in memory: 4 KiB ahead is the next panel or two, fetched
     * into L2 while this one runs. Where A is streamed once (weights against a few pixels, as
     * in 7x7 Winograd products) the broadcasts otherwise wait on memory: ResNet-18's 512-channel
     * F(2x2) layer x0.95, the network x0.93 (Zen 3, one thread). */
    _mm_prefetch((const char*)(a + 1024), _MM_HINT_T1);
    __m256 b0, b1 = _mm256_setzero_ps();
    if (full || !b_offsets) { /* packed panels are whole */
      b0 = _mm256_loadu_ps(bk);
      if (nv == 2) b1 = _mm256_loadu_ps(bk + 8);
    } else {
      b0 = _mm256_maskload_ps(bk, m0);
      if (nv == 2) b1 = _mm256_maskload_ps(bk + 8, m1);
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
      lo[r] = _mm256_fmadd_ps(ar, b0, lo[r]);
      if (nv == 2) hi[r] = _mm256_fmadd_ps(ar, b1, hi[r]);
    }
    a += MR;
  }
  const __m256 vmin = _mm256_set1_ps(ep->min);
  const __m256 vmax = _mm256_set1_ps(ep->max);
  __m256 col0 = _mm256_setzero_ps(), col1 = _mm256_setzero_ps();
  if (ep->bias_col) {
    col0 = full ? _mm256_loadu_ps(ep->bias_col) : _mm256_maskload_ps(ep->bias_col, m0);
    if (nv == 2) {
      col1 = full ? _mm256_loadu_ps(ep->bias_col + 8) : _mm256_maskload_ps(ep->bias_col + 8, m1);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < mr; r++) {
    if ((size_t)r >= rows) break;
    float* cr = c + (size_t)r * ldc;
    __m256 v0 = lo[r], v1 = hi[r];
    if (ep->accumulate) {
      v0 = _mm256_add_ps(full ? _mm256_loadu_ps(cr) : _mm256_maskload_ps(cr, m0), v0);
      if (nv == 2) {
        v1 = _mm256_add_ps(full ? _mm256_loadu_ps(cr + 8) : _mm256_maskload_ps(cr + 8, m1), v1);
      }
    }
    if (ep->bias_row) {
      const __m256 br = _mm256_set1_ps(ep->bias_row[r]);
      v0 = _mm256_add_ps(v0, br);
      v1 = _mm256_add_ps(v1, br);
    }
    if (ep->bias_col) {
      v0 = _mm256_add_ps(v0, col0);
      v1 = _mm256_add_ps(v1, col1);
    }
    /* max(limit, v) returns v when v is NaN (the second operand wins on unordered inputs). */
    v0 = _mm256_min_ps(vmax, _mm256_max_ps(vmin, v0));
    v1 = _mm256_min_ps(vmax, _mm256_max_ps(vmin, v1));
    if (full) {
      _mm256_storeu_ps(cr, v0);
      _mm256_storeu_ps(cr + 8, v1);
    } else {
      _mm256_maskstore_ps(cr, m0, v0);
      if (nv == 2) _mm256_maskstore_ps(cr + 8, m1, v1);
    }
  }
}

/* An edge tile of `rows` rows, computing mr = 1, 2, 4 or 6 of them. */
FC_INLINE void edge_tile(size_t rows, size_t kc, const float* a, const float* b,
                         const ptrdiff_t* b_offsets, float* c, size_t ldc,
                         const fc_gemm_epilogue* ep, __m256i m0, __m256i m1, const int nv) {
  if (rows == 1) {
    tile(rows, kc, a, b, b_offsets, c, ldc, ep, m0, m1, nv, 0, 1);
  } else if (rows == 2) {
    tile(rows, kc, a, b, b_offsets, c, ldc, ep, m0, m1, nv, 0, 2);
  } else if (rows <= 4) {
    tile(rows, kc, a, b, b_offsets, c, ldc, ep, m0, m1, nv, 0, 4);
  } else {
    tile(rows, kc, a, b, b_offsets, c, ldc, ep, m0, m1, nv, 0, MR);
  }
}

FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_6x16__avx2) {
  const __m256i all = _mm256_set1_epi32(-1);
  if (rows == MR && cols == NR) {
    tile(MR, kc, a, b, b_offsets, c, ldc, ep, all, all, 2, 1, MR);
  } else if (cols > 8) {
    edge_tile(rows, kc, a, b, b_offsets, c, ldc, ep, all, lanes(cols - 8), 2);
  } else {
    edge_tile(rows, kc, a, b, b_offsets, c, ldc, ep, lanes(cols), all, 1);
  }
}

/* fc_f32_gemm_narrow_ukernel_12x4__avx2: the last 1-4 columns of C (a 7x7 image's 49 pixels are
 * 3 x 16 + 1, a 14x14 one's 12 x 16 + 4) for two A panels at once, transposed: a panel's six rows
 * are the low lanes of one vector. Per k: one load of each A panel, a broadcast of each B column,
 * an FMA of each pair. The tile kernel spent a whole 8-column vector on such an edge, six
 * broadcasts and six FMAs per k for each panel: a 7x7 image's one-column edge took a fifth of
 * MobileNetV2's 320 -> 1280 layer. Each element is the same fused a * b + sum, in k order from
 * zero, as in the tile kernel: the results are bit-identical. */
FC_INLINE void narrow_tile(size_t kc, const float* a, size_t a_stride, const float* b,
                           size_t b_stride, const ptrdiff_t* b_offsets, float* c, size_t ldc,
                           const fc_gemm_epilogue* ep, size_t rows, size_t cols, const int np,
                           const int nc) {
  __m256 acc[2][4];
  size_t col[4]; /* columns past `cols` (computed, never stored) read the last one again */
#pragma GCC unroll 4
  for (int j = 0; j < nc; j++) {
    acc[0][j] = _mm256_setzero_ps();
    acc[1][j] = _mm256_setzero_ps();
    col[j] = (size_t)j < cols ? (size_t)j : cols - 1;
  }
  /* A panel's k-th six floats as a vector: the two lanes past them (the next k's rows, never
   * stored) are read unmasked but at the panel's last k, which may end the buffer. */
  const __m256i six = lanes(MR);
  for (size_t k = 0; k < kc; k++) {
    const float* bk = b_offsets ? b + b_offsets[k] : b + k * b_stride;
    const float* ak = a + k * MR;
    const int last = k + 1 == kc;
    const __m256 a0 = last ? _mm256_maskload_ps(ak, six) : _mm256_loadu_ps(ak);
    __m256 a1 = _mm256_setzero_ps();
    if (np == 2) a1 = last ? _mm256_maskload_ps(ak + a_stride, six) : _mm256_loadu_ps(ak + a_stride);
#pragma GCC unroll 4
    for (int j = 0; j < nc; j++) {
      const __m256 bj = _mm256_broadcast_ss(bk + col[j]);
      acc[0][j] = _mm256_fmadd_ps(a0, bj, acc[0][j]);
      if (np == 2) acc[1][j] = _mm256_fmadd_ps(a1, bj, acc[1][j]);
    }
  }
  float sums[8] __attribute__((aligned(32)));
  for (int p = 0; p < np; p++) {
    const size_t r0 = (size_t)p * MR, n = rows - r0 < MR ? rows - r0 : MR;
    for (size_t j = 0; j < cols; j++) {
      _mm256_store_ps(sums, acc[p][j]);
      fc_narrow_epilogue(sums, n, r0, j, c, ldc, ep);
    }
  }
}

/* The edge's columns through narrow_tile compiled for 1, 2 or 4 of them (a one-column edge
 * costs one broadcast per k, not four), for np A panels. */
FC_INLINE void narrow_columns(size_t kc, const float* a, size_t a_stride, const float* b,
                              size_t b_stride, const ptrdiff_t* b_offsets, float* c, size_t ldc,
                              const fc_gemm_epilogue* ep, size_t rows, size_t cols, const int np) {
  if (cols == 1) {
    narrow_tile(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, np, 1);
  } else if (cols == 2) {
    narrow_tile(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, np, 2);
  } else {
    narrow_tile(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, np, 4);
  }
}

void fc_f32_gemm_narrow_ukernel_12x4__avx2(size_t rows, size_t cols, size_t kc, const float* a,
                                           size_t a_stride, const float* b, size_t b_stride,
                                           const ptrdiff_t* b_offsets, float* c, size_t ldc,
                                           const fc_gemm_epilogue* ep) {
  if (rows > MR) {
    narrow_columns(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, 2);
  } else {
    narrow_columns(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, 1);
  }
}
