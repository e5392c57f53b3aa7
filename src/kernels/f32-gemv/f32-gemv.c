/* The GEMM of one row (a dense layer at batch 1): the block sums of one row of A against up to
 * four packed B panels, NR = 2 * VLEN columns each (the NR of the ISA's GEMM micro-kernel).
 *
 * The MR x NR micro-kernel would compute MR rows of which one is used, 8x the work on AVX-512.
 * Here each column still sums its products in k order from zero, with the same fused
 * multiply-adds as the micro-kernel (the ISA copies are built with FMA, the scalar copy is not,
 * like the scalar micro-kernel), so a sample's result does not depend on the batch it came in.
 * Four panels give eight independent accumulator chains, enough to hide the FMA latency.
 *
 * One portable C source compiled once per ISA (-DFC_ISA). Contract: src/include/fc_kernels.h. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

static inline void gemv_panels(size_t kc, const float* a, size_t a_stride, const float* b,
                               size_t panel_stride, float* sums, const int panels) {
  vf lo[4], hi[4];
  for (int p = 0; p < panels; p++) lo[p] = hi[p] = (vf){0};
  for (size_t k = 0; k < kc; k++) {
    const vf ak = (vf){0} + a[k * a_stride];
#pragma GCC unroll 4
    for (int p = 0; p < panels; p++) {
      const float* bk = b + p * panel_stride + k * 2 * VLEN;
      lo[p] = lo[p] + ak * load(bk);
      hi[p] = hi[p] + ak * load(bk + VLEN);
    }
  }
  for (int p = 0; p < panels; p++) {
    store(sums + p * 2 * VLEN, lo[p]);
    store(sums + p * 2 * VLEN + VLEN, hi[p]);
  }
}

void FC_NAME(fc_f32_gemv_ukernel)(size_t kc, const float* a, size_t a_stride, const float* b,
                                  size_t panel_stride, size_t panels, float* sums) {
  switch (panels) {
    case 4: gemv_panels(kc, a, a_stride, b, panel_stride, sums, 4); break;
    case 3: gemv_panels(kc, a, a_stride, b, panel_stride, sums, 3); break;
    case 2: gemv_panels(kc, a, a_stride, b, panel_stride, sums, 2); break;
    default: gemv_panels(kc, a, a_stride, b, panel_stride, sums, 1); break;
  }
}
