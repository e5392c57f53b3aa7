/* fc_f32_gemm_minmax_ukernel_6x16__avx2: a 6 x 16 tile held in 12 ymm accumulators.
 * Per k: two 8-wide loads of B (a packed panel, or rows read in place), six broadcasts of the
 * A panel, twelve FMAs.
 * Contract: src/include/fc_kernels.h. Compiled with -mavx2 -mfma. */
#include <immintrin.h>

#include "fc_kernels.h"

#define MR 6

FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_6x16__avx2) {
  __m256 lo[MR], hi[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; r++) {
    lo[r] = _mm256_setzero_ps();
    hi[r] = _mm256_setzero_ps();
  }
#define FC_TILE_STEP(b0, b1)                                                                       \
  _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                         \
    const __m256 ar = _mm256_broadcast_ss(a + r);                                                 \
    lo[r] = _mm256_fmadd_ps(ar, b0, lo[r]);                                                       \
    hi[r] = _mm256_fmadd_ps(ar, b1, hi[r]);                                                       \
  }                                                                                              \
  a += MR;
  if (b_offsets) {
    for (size_t k = 0; k < kc; k++) {
      const float* bk = b + b_offsets[k];
      const __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
      FC_TILE_STEP(b0, b1)
    }
  } else {
    for (size_t k = 0; k < kc; k++, b += 16) {
      const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
      FC_TILE_STEP(b0, b1)
    }
  }
  const __m256 vmin = _mm256_set1_ps(ep->min);
  const __m256 vmax = _mm256_set1_ps(ep->max);
  const __m256 col0 = ep->bias_col ? _mm256_loadu_ps(ep->bias_col) : _mm256_setzero_ps();
  const __m256 col1 = ep->bias_col ? _mm256_loadu_ps(ep->bias_col + 8) : _mm256_setzero_ps();
#pragma GCC unroll 6
  for (int r = 0; r < MR; r++) {
    float* cr = c + (size_t)r * ldc;
    __m256 v0 = lo[r], v1 = hi[r];
    if (ep->accumulate) {
      v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);
      v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1);
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
    _mm256_storeu_ps(cr, v0);
    _mm256_storeu_ps(cr + 8, v1);
  }
}
