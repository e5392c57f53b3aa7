/* fc_f32_gemm_minmax_ukernel_8x32__avx512f: an 8 x 32 tile held in 16 zmm accumulators.
 * Per k: two 16-wide loads of B (a packed panel, or rows read in place), eight broadcasts of
 * the A panel, sixteen FMAs.
 * Edge tiles use masked loads and stores, and only one vector of B when 16 columns or fewer are
 * left: no scratch tile, no reads past the matrix. (8-wide ymm arithmetic for the last 8 columns
 * measured no faster on Zen 4 than a masked zmm vector: 2.0 against 2.5 ns per k for 8 rows.)
 * Contract: src/include/fc_kernels.h. Compiled with -mavx512f -mfma. */
#include <immintrin.h>

#include "fc_kernels.h"

#define MR 8
#define NR 32
#define FC_INLINE static inline __attribute__((always_inline))

/* The lanes of a vector that hold one of the first `n` columns. */
static __mmask16 lanes(size_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* Rows 0..rows-1 of the tile, columns selected by m0 (and m1 for the second vector when nv = 2).
 * Only the first `mr` (a constant, rows <= mr <= MR) rows are computed: an edge tile of a few
 * rows (a 7x7 image's 49th pixel as the GEMM rows) costs its own rows, not eight. B rows are
 * `NR` apart in a packed panel. With all lanes set the masks fold away. */
FC_INLINE void tile_zmm(size_t kc, const float* a, const float* b, const ptrdiff_t* b_offsets,
                        float* c, size_t ldc, const fc_gemm_epilogue* ep, size_t rows,
                        __mmask16 m0, __mmask16 m1, const int nv, const int mr) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  for (size_t k = 0; k < kc; k++) {
    const float* bk = b_offsets ? b + b_offsets[k] : b + k * NR;
    /* In place, masked loads never touch memory past the matrix' last column. */
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bk);
    const __m512 b1 = nv == 2 ? _mm512_maskz_loadu_ps(m1, bk + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      lo[r] = _mm512_fmadd_ps(ar, b0, lo[r]);
      if (nv == 2) hi[r] = _mm512_fmadd_ps(ar, b1, hi[r]);
    }
    a += MR;
  }
  const __m512 vmin = _mm512_set1_ps(ep->min);
  const __m512 vmax = _mm512_set1_ps(ep->max);
  const float* bias_col = ep->bias_col;
  const __m512 col0 = bias_col ? _mm512_maskz_loadu_ps(m0, bias_col) : _mm512_setzero_ps();
  const __m512 col1 = bias_col && nv == 2 ? _mm512_maskz_loadu_ps(m1, bias_col + 16)
                                          : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++) {
    if ((size_t)r >= rows) break;
    float* cr = c + (size_t)r * ldc;
    __m512 v0 = lo[r], v1 = hi[r];
    if (ep->accumulate) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), v0);
      if (nv == 2) v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), v1);
    }
    if (ep->bias_row) {
      const __m512 br = _mm512_set1_ps(ep->bias_row[r]);
      v0 = _mm512_add_ps(v0, br);
      v1 = _mm512_add_ps(v1, br);
    }
    if (bias_col) {
      v0 = _mm512_add_ps(v0, col0);
      v1 = _mm512_add_ps(v1, col1);
    }
    /* max(limit, v) returns v when v is NaN (the second operand wins on unordered inputs). */
    v0 = _mm512_min_ps(vmax, _mm512_max_ps(vmin, v0));
    _mm512_mask_storeu_ps(cr, m0, v0);
    if (nv == 2) {
      v1 = _mm512_min_ps(vmax, _mm512_max_ps(vmin, v1));
      _mm512_mask_storeu_ps(cr + 16, m1, v1);
    }
  }
}

/* An edge tile of `rows` rows, computing mr = 1, 2, 4 or 8 of them. */
FC_INLINE void edge_tile(size_t kc, const float* a, const float* b, const ptrdiff_t* b_offsets,
                         float* c, size_t ldc, const fc_gemm_epilogue* ep, size_t rows,
                         __mmask16 m0, __mmask16 m1, const int nv) {
  if (rows == 1) {
    tile_zmm(kc, a, b, b_offsets, c, ldc, ep, rows, m0, m1, nv, 1);
  } else if (rows == 2) {
    tile_zmm(kc, a, b, b_offsets, c, ldc, ep, rows, m0, m1, nv, 2);
  } else if (rows <= 4) {
    tile_zmm(kc, a, b, b_offsets, c, ldc, ep, rows, m0, m1, nv, 4);
  } else {
    tile_zmm(kc, a, b, b_offsets, c, ldc, ep, rows, m0, m1, nv, MR);
  }
}

FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_8x32__avx512f) {
  if (rows == MR && cols == NR) {
    tile_zmm(kc, a, b, b_offsets, c, ldc, ep, MR, 0xFFFF, 0xFFFF, 2, MR);
  } else if (cols > 16) {
    edge_tile(kc, a, b, b_offsets, c, ldc, ep, rows, 0xFFFF, lanes(cols - 16), 2);
  } else {
    edge_tile(kc, a, b, b_offsets, c, ldc, ep, rows, lanes(cols), 0, 1);
  }
}

/* fc_f32_gemm_narrow_ukernel_16x8__avx512f: the last few columns of C (up to 8, where the pixels
 * of an image are not a multiple of 32: 196 = 6 x 32 + 4 on 14x14) for two A panels at once,
 * transposed: the rows are the lanes. Per k: one 8-wide load of each A panel, a broadcast of each
 * B column, an FMA of each pair, so 4 columns cost 8 ymm FMAs per k for 16 rows where the 8x32
 * tile spends 16 zmm FMAs (two panels of one 16-lane vector) on them. Each element is the same
 * fused a * b + sum, in k order from zero, as in the tile kernel: the results are bit-identical.
 * Zen 4 runs two ymm FMAs per cycle, the same lanes per cycle as one zmm FMA. */
FC_INLINE void narrow_tile(size_t kc, const float* a, size_t a_stride, const float* b,
                           size_t b_stride, const ptrdiff_t* b_offsets, float* c, size_t ldc,
                           const fc_gemm_epilogue* ep, size_t rows, size_t cols, const int np,
                           const int nc) {
  __m256 acc[2][8];
  size_t col[8]; /* columns past `cols` (computed, never stored) read the last one again */
#pragma GCC unroll 8
  for (int j = 0; j < nc; j++) {
    acc[0][j] = _mm256_setzero_ps();
    acc[1][j] = _mm256_setzero_ps();
    col[j] = (size_t)j < cols ? (size_t)j : cols - 1;
  }
  for (size_t k = 0; k < kc; k++) {
    const float* bk = b_offsets ? b + b_offsets[k] : b + k * b_stride;
    const __m256 a0 = _mm256_loadu_ps(a + k * MR);
    const __m256 a1 = np == 2 ? _mm256_loadu_ps(a + a_stride + k * MR) : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int j = 0; j < nc; j++) {
      const __m256 bj = _mm256_broadcast_ss(bk + col[j]);
      acc[0][j] = _mm256_fmadd_ps(a0, bj, acc[0][j]);
      if (np == 2) acc[1][j] = _mm256_fmadd_ps(a1, bj, acc[1][j]);
    }
  }
  float sums[MR] __attribute__((aligned(32)));
  for (int p = 0; p < np; p++) {
    const size_t r0 = (size_t)p * MR, n = rows - r0 < MR ? rows - r0 : MR;
    for (size_t j = 0; j < cols; j++) {
      _mm256_store_ps(sums, acc[p][j]);
      fc_narrow_epilogue(sums, n, r0, j, c, ldc, ep);
    }
  }
}

void fc_f32_gemm_narrow_ukernel_16x8__avx512f(size_t rows, size_t cols, size_t kc,
                                              const float* a, size_t a_stride, const float* b,
                                              size_t b_stride, const ptrdiff_t* b_offsets,
                                              float* c, size_t ldc, const fc_gemm_epilogue* ep) {
  if (cols <= 4 && rows > MR) {
    narrow_tile(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, 2, 4);
    return;
  }
  if (cols <= 4) {
    narrow_tile(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows, cols, 1, 4);
    return;
  }
  /* 5-8 columns: one A panel at a time, as two panels would need 16 accumulators besides the
   * loads (only 16 ymm registers without AVX512VL: GCC spilled them). */
  narrow_tile(kc, a, a_stride, b, b_stride, b_offsets, c, ldc, ep, rows < MR ? rows : MR, cols, 1,
              8);
  if (rows > MR) {
    fc_gemm_epilogue lower = *ep;
    if (lower.bias_row) lower.bias_row += MR;
    narrow_tile(kc, a + a_stride, a_stride, b, b_stride, b_offsets, c + MR * ldc, ldc, &lower,
                rows - MR, cols, 1, 8);
  }
}

/* fc_f32_gemm_pixels_ukernel_8x32__avx512f: the 8x32 tile of a 1x1 convolution transposed, for
 * the path that reads the input in place (fc_gemm_pixels): the 8 rows are pixels, A[r][k] at
 * a[k * lda + r] (8 contiguous floats of input channel k, lda = the image's pixels), B is a packed
 * panel of weights (kc x 32, the dense layout), and the tile is stored transposed, C[r][j] at
 * c[j * ldc + r]: 32 output channels of 8 pixels each. The loop per k is the tile kernel's
 * (eight broadcasts, two loads of B, sixteen FMAs), so each element is the same fused sum in k
 * order from zero, bit-identical to the other orientation. The accumulators are transposed in
 * registers, 8 x 16 into 16 ymm vectors of 8 pixels, and the epilogue runs on those: a channel's
 * bias is then one broadcast and C is read and written 32 bytes per channel. */

/* v[r] (row r, 16 channels) into out[j] (channel j, 8 rows): in-lane unpacks and shuffles make
 * 4x4 blocks, and a two-source permute pairs the rows 0-3 and 4-7 of each channel. */
FC_INLINE void transpose8x16(const __m512 v[MR], __m256 out[16]) {
  __m512 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++) { /* u[4h + q]: channel 4L + q of rows 4h .. 4h + 3 in lane L */
    const __m512* s = t + 4 * h;
    u[4 * h] = _mm512_shuffle_ps(s[0], s[2], 0x44);
    u[4 * h + 1] = _mm512_shuffle_ps(s[0], s[2], 0xEE);
    u[4 * h + 2] = _mm512_shuffle_ps(s[1], s[3], 0x44);
    u[4 * h + 3] = _mm512_shuffle_ps(s[1], s[3], 0xEE);
  }
  const __m512i lanes01 = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
  const __m512i lanes23 =
      _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    const __m512 w01 = _mm512_permutex2var_ps(u[q], lanes01, u[4 + q]);
    const __m512 w23 = _mm512_permutex2var_ps(u[q], lanes23, u[4 + q]);
    out[q] = _mm512_castps512_ps256(w01);
    out[4 + q] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w01), 1));
    out[8 + q] = _mm512_castps512_ps256(w23);
    out[12 + q] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w23), 1));
  }
}

/* Rows 0..rows-1 (mr of them computed, a constant), columns 0..cols-1 (nv vectors of B). A full
 * tile (`full`: 8 rows) stores whole ymm vectors; an edge one masked ones. */
FC_INLINE void pixels_tile(size_t kc, const float* a, size_t lda, const float* b, float* c,
                           size_t ldc, const fc_gemm_epilogue* ep, size_t rows, size_t cols,
                           const int nv, const int mr, const int full) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  for (size_t k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_load_ps(b + k * NR);
    const __m512 b1 = nv == 2 ? _mm512_load_ps(b + k * NR + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      lo[r] = _mm512_fmadd_ps(ar, b0, lo[r]);
      if (nv == 2) hi[r] = _mm512_fmadd_ps(ar, b1, hi[r]);
    }
    a += lda;
  }
  __m256 ch[NR];
  transpose8x16(lo, ch);
  if (nv == 2) transpose8x16(hi, ch + 16);
  /* Edge tiles load and store their rows through AVX-512 masks on the low 8 lanes of a zmm
   * vector (AVX512VL's 8-lane masked forms are not in the baseline); masked-off lanes are
   * neither read nor written. */
  const __mmask16 mask = (__mmask16)((1u << rows) - 1);
  const __m256 vmin = _mm256_set1_ps(ep->min), vmax = _mm256_set1_ps(ep->max);
#pragma GCC unroll 32
  for (int j = 0; j < 16 * nv; j++) {
    if ((size_t)j >= cols) break;
    float* cj = c + (size_t)j * ldc;
    __m256 v = ch[j];
    if (ep->accumulate) {
      const __m256 cv = full ? _mm256_loadu_ps(cj)
                             : _mm512_castps512_ps256(_mm512_maskz_loadu_ps(mask, cj));
      v = _mm256_add_ps(cv, v);
    }
    if (ep->bias_col) v = _mm256_add_ps(v, _mm256_broadcast_ss(ep->bias_col + j));
    v = _mm256_min_ps(vmax, _mm256_max_ps(vmin, v)); /* keeps NaN, as in the tile kernel */
    if (full) {
      _mm256_storeu_ps(cj, v);
    } else {
      _mm512_mask_storeu_ps(cj, mask, _mm512_castps256_ps512(v));
    }
  }
}

/* An edge tile (fewer than 8 rows or 32 columns), computing 1, 2, 4, 7 or 8 rows: 7 for the
 * 7-pixel panels of a 7x7 image (fc_gemm_pixels cuts its 49 pixels into 7 panels of 7). */
FC_INLINE void pixels_edge(size_t kc, const float* a, size_t lda, const float* b, float* c,
                           size_t ldc, const fc_gemm_epilogue* ep, size_t rows, size_t cols,
                           const int nv) {
  if (rows == 1) {
    pixels_tile(kc, a, lda, b, c, ldc, ep, rows, cols, nv, 1, 0);
  } else if (rows == 2) {
    pixels_tile(kc, a, lda, b, c, ldc, ep, rows, cols, nv, 2, 0);
  } else if (rows <= 4) {
    pixels_tile(kc, a, lda, b, c, ldc, ep, rows, cols, nv, 4, 0);
  } else if (rows == 7) {
    pixels_tile(kc, a, lda, b, c, ldc, ep, rows, cols, nv, 7, 0);
  } else {
    pixels_tile(kc, a, lda, b, c, ldc, ep, rows, cols, nv, MR, 0);
  }
}

void fc_f32_gemm_pixels_ukernel_8x32__avx512f(size_t rows, size_t cols, size_t kc,
                                              const float* a, size_t lda, const float* b,
                                              float* c, size_t ldc, const fc_gemm_epilogue* ep) {
  if (rows == MR && cols == NR) {
    pixels_tile(kc, a, lda, b, c, ldc, ep, MR, NR, 2, MR, 1);
  } else if (rows == MR) {
    if (cols > 16) pixels_tile(kc, a, lda, b, c, ldc, ep, MR, cols, 2, MR, 1);
    else pixels_tile(kc, a, lda, b, c, ldc, ep, MR, cols, 1, MR, 1);
  } else if (cols > 16) {
    pixels_edge(kc, a, lda, b, c, ldc, ep, rows, cols, 2);
  } else {
    pixels_edge(kc, a, lda, b, c, ldc, ep, rows, cols, 1);
  }
}
