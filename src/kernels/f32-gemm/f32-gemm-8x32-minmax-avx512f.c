/* fc_f32_gemm_minmax_ukernel_8x32__avx512f: an 8 x 32 tile held in 16 zmm accumulators.
 * Per k: two 16-wide loads of B (a packed panel, or rows read in place), eight broadcasts of
 * the A panel, sixteen FMAs.
 * Contract: src/include/fc_kernels.h. Compiled with -mavx512f -mfma. */
#include <immintrin.h>

#include "fc_kernels.h"

#define MR 8

FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_8x32__avx512f) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
#define FC_TILE_STEP(b0, b1)                                                                       \
  _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++) {                                         \
    const __m512 ar = _mm512_set1_ps(a[r]);                                                       \
    lo[r] = _mm512_fmadd_ps(ar, b0, lo[r]);                                                       \
    hi[r] = _mm512_fmadd_ps(ar, b1, hi[r]);                                                       \
  }                                                                                              \
  a += MR;
  if (b_offsets) {
    for (size_t k = 0; k < kc; k++) {
      const float* bk = b + b_offsets[k];
      const __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16);
      FC_TILE_STEP(b0, b1)
    }
  } else {
    for (size_t k = 0; k < kc; k++, b += 32) {
      const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
      FC_TILE_STEP(b0, b1)
    }
  }
  const __m512 vmin = _mm512_set1_ps(ep->min);
  const __m512 vmax = _mm512_set1_ps(ep->max);
  const __m512 col0 = ep->bias_col ? _mm512_loadu_ps(ep->bias_col) : _mm512_setzero_ps();
  const __m512 col1 = ep->bias_col ? _mm512_loadu_ps(ep->bias_col + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++) {
    float* cr = c + (size_t)r * ldc;
    __m512 v0 = lo[r], v1 = hi[r];
    if (ep->accumulate) {
      v0 = _mm512_add_ps(_mm512_loadu_ps(cr), v0);
      v1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), v1);
    }
    if (ep->bias_row) {
      const __m512 br = _mm512_set1_ps(ep->bias_row[r]);
      v0 = _mm512_add_ps(v0, br);
      v1 = _mm512_add_ps(v1, br);
    }
    if (ep->bias_col) {
      v0 = _mm512_add_ps(v0, col0);
      v1 = _mm512_add_ps(v1, col1);
    }
    /* max(limit, v) returns v when v is NaN (the second operand wins on unordered inputs). */
    v0 = _mm512_min_ps(vmax, _mm512_max_ps(vmin, v0));
    v1 = _mm512_min_ps(vmax, _mm512_max_ps(vmin, v1));
    _mm512_storeu_ps(cr, v0);
    _mm512_storeu_ps(cr + 16, v1);
  }
}
