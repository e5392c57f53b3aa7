/* Vector micro-kernels over contiguous or strided runs: one portable C source that the build
 * compiles three times, with baseline, AVX2+FMA and AVX-512 flags, so the compiler vectorises
 * each copy for its instruction set. FC_ISA names the copy: the symbols end in __FC_ISA.
 * Contracts: src/include/fc_kernels.h. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

static inline float clamp(float v, float lo, float hi) {
  /* Comparisons with NaN are false, so NaN passes through unchanged. */
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

void FC_NAME(fc_f32_vcopy_strided_ukernel)(size_t n, const float* restrict x, size_t stride,
                                           float* restrict y) {
  /* A constant stride of 2 (pooling and convolution at stride 2) lets the compiler vectorise
   * the gather into permutes. */
  if (stride == 1) {
    for (size_t i = 0; i < n; i++) y[i] = x[i];
  } else if (stride == 2) {
    for (size_t i = 0; i < n; i++) y[i] = x[2 * i];
  } else {
    for (size_t i = 0; i < n; i++) y[i] = x[i * stride];
  }
}

void FC_NAME(fc_f32_vclamp_ukernel)(size_t n, const float* x, float* y, float lo, float hi) {
  for (size_t i = 0; i < n; i++) y[i] = clamp(x[i], lo, hi);
}

void FC_NAME(fc_f32_vadd_minmax_ukernel)(size_t n, const float* a, const float* b, float* y,
                                         float lo, float hi) {
  for (size_t i = 0; i < n; i++) y[i] = clamp(a[i] + b[i], lo, hi);
}

void FC_NAME(fc_f32_vaffine_ukernel)(size_t n, const float* x, float scale, float shift,
                                     float* y) {
  for (size_t i = 0; i < n; i++) y[i] = x[i] * scale + shift;
}
