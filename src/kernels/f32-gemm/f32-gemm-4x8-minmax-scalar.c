/* fc_f32_gemm_minmax_ukernel_4x8__scalar: the portable 4 x 8 tile, plain C.
 * Contract: src/include/fc_kernels.h. Compiled with baseline flags only. */
#include "fc_kernels.h"

#define MR 4
#define NR 8

static float clamp(float v, float lo, float hi) {
  /* Comparisons with NaN are false, so NaN passes through unchanged. */
  if (v < lo) v = lo;
  if (v > hi) v = hi;
  return v;
}

FC_GEMM_UKERNEL(fc_f32_gemm_minmax_ukernel_4x8__scalar) {
  float acc[MR][NR] = {{0.0f}};
  for (size_t k = 0; k < kc; k++) {
    const float* bk = b_offsets ? b + b_offsets[k] : b + k * NR;
    for (int r = 0; r < MR; r++) {
      const float ar = a[r];
      for (size_t j = 0; j < cols; j++) acc[r][j] += ar * bk[j];
    }
    a += MR;
  }
  for (size_t r = 0; r < rows; r++) {
    float* cr = c + r * ldc;
    for (size_t j = 0; j < cols; j++) {
      float v = acc[r][j];
      if (ep->accumulate) v = cr[j] + v;
      if (ep->bias_row) v += ep->bias_row[r];
      if (ep->bias_col) v += ep->bias_col[j];
      cr[j] = clamp(v, ep->min, ep->max);
    }
  }
}
