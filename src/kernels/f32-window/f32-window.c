/* Sliding-window micro-kernels over a flat run: every output reads `taps` inputs at fixed
 * offsets. Pooling and depthwise-style convolution lay each input plane out so that a whole
 * output plane is one run (see src/ops/window.c); these kernels then see only contiguous loads.
 *
 * One portable C source compiled once per ISA (-DFC_ISA), written with GCC/Clang vector
 * extensions so each copy uses its own register width. Contract (src/include/fc_kernels.h):
 * the kernels work in whole vectors, so they may read x[i + offsets[t]] and write y[i] for i up
 * to n rounded up to FC_WINDOW_SLACK. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if FC_WINDOW_SLACK % VLEN
#error "FC_WINDOW_SLACK must be a multiple of the vector length"
#endif

/* max(acc, v) where NaN wins, as in numpy.maximum. */
static inline vf max_nan(vf acc, vf v) {
  const vi take = (v > acc) | (v != v);
  return (vf)(((vi)v & take) | ((vi)acc & ~take));
}

/* clamp(v, lo, hi) keeping NaN, as the GEMM epilogue does. */
static inline vf clamp(vf v, float lo, float hi) {
  const vi below = v < lo, above = v > hi;
  v = (vf)(((vi)v & ~below) | ((vi)((vf){} + lo) & below));
  return (vf)(((vi)v & ~above) | ((vi)((vf){} + hi) & above));
}

static inline vf start(const fc_window_epilogue* ep, const float* y) {
  return ep->accumulate ? load(y) : (vf){} + ep->init;
}

/* Four vectors per pass keep four independent FMA chains in flight. */
void FC_NAME(fc_f32_wmacc_ukernel)(size_t n, const float* x, const ptrdiff_t* offsets,
                                   const float* w, size_t taps, const fc_window_epilogue* ep,
                                   float* y) {
  size_t i = 0;
  for (; i + 4 * VLEN <= n + VLEN - 1; i += 4 * VLEN) {
    vf a0 = start(ep, y + i), a1 = start(ep, y + i + VLEN), a2 = start(ep, y + i + 2 * VLEN),
       a3 = start(ep, y + i + 3 * VLEN);
    for (size_t t = 0; t < taps; t++) {
      const float* xt = x + i + offsets[t];
      a0 += w[t] * load(xt);
      a1 += w[t] * load(xt + VLEN);
      a2 += w[t] * load(xt + 2 * VLEN);
      a3 += w[t] * load(xt + 3 * VLEN);
    }
    store(y + i, clamp(a0, ep->min, ep->max));
    store(y + i + VLEN, clamp(a1, ep->min, ep->max));
    store(y + i + 2 * VLEN, clamp(a2, ep->min, ep->max));
    store(y + i + 3 * VLEN, clamp(a3, ep->min, ep->max));
  }
  for (; i < n; i += VLEN) {
    vf a = start(ep, y + i);
    for (size_t t = 0; t < taps; t++) a += w[t] * load(x + i + offsets[t]);
    store(y + i, clamp(a, ep->min, ep->max));
  }
}

void FC_NAME(fc_f32_wmax_ukernel)(size_t n, const float* x, const ptrdiff_t* offsets, size_t taps,
                                  float* y) {
  size_t i = 0;
  for (; i + 2 * VLEN <= n + VLEN - 1; i += 2 * VLEN) {
    vf a0 = load(x + i + offsets[0]), a1 = load(x + i + offsets[0] + VLEN);
    for (size_t t = 1; t < taps; t++) {
      a0 = max_nan(a0, load(x + i + offsets[t]));
      a1 = max_nan(a1, load(x + i + offsets[t] + VLEN));
    }
    store(y + i, a0);
    store(y + i + VLEN, a1);
  }
  for (; i < n; i += VLEN) {
    vf a = load(x + i + offsets[0]);
    for (size_t t = 1; t < taps; t++) a = max_nan(a, load(x + i + offsets[t]));
    store(y + i, a);
  }
}

/* The max of a window's four values, NaN if any is NaN; branch-free (max, then a select). */
static inline float max4_nan(float a, float b, float c, float d) {
  const float ab = a > b ? a : b, cd = c > d ? c : d, m = ab > cd ? ab : cd;
  const int nan = (a != a) | (b != b) | (c != c) | (d != d);
  return nan ? a + b + c + d : m;
}

/* The first n lanes (n <= VLEN) of the vector at p, the others zero and their memory not read,
 * and the store of the first n lanes: the masked loads and stores of AVX-512 and AVX2. */
#if defined(__AVX512F__)
#define FC_MASKED_TAIL 1
static inline vf load_first(const float* p, size_t n) {
  return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline void store_first(float* p, size_t n, vf v) {
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
}
#elif defined(__AVX2__)
#define FC_MASKED_TAIL 1
static inline __m256i first_lanes(size_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf load_first(const float* p, size_t n) {
  return (vf)_mm256_maskload_ps(p, first_lanes(n));
}
static inline void store_first(float* p, size_t n, vf v) {
  _mm256_maskstore_ps(p, first_lanes(n), (__m256)v);
}
#endif

/* One output row of a 2x2, stride-2 max pooling: y[i] = max of r0[2i], r0[2i + 1], r1[2i] and
 * r1[2i + 1] for i < out_w (NaN wins). Reads only those 2 * out_w columns of each row, in place:
 * no layout copy, no slack. The last out_w % VLEN columns are one masked vector where the ISA
 * has masked loads: LeNet-5's rows of 14 and 5 outputs were all scalar, 2-4x slower. */
void FC_NAME(fc_f32_maxpool2x2_ukernel)(size_t out_w, const float* r0, const float* r1, float* y) {
  size_t i = 0;
  for (; i + VLEN <= out_w; i += VLEN) {
    const vf lo = max_nan(load(r0 + 2 * i), load(r1 + 2 * i));
    const vf hi = max_nan(load(r0 + 2 * i + VLEN), load(r1 + 2 * i + VLEN));
    store(y + i, max_nan(even_lanes(lo, hi), odd_lanes(lo, hi)));
  }
#ifdef FC_MASKED_TAIL
  if (i < out_w) {
    /* 2 * (out_w - i) < 2 * VLEN inputs per row: a first vector, then what is left. */
    const size_t n = 2 * (out_w - i), n_lo = n < VLEN ? n : VLEN, n_hi = n - n_lo;
    const vf lo = max_nan(load_first(r0 + 2 * i, n_lo), load_first(r1 + 2 * i, n_lo));
    const vf hi = max_nan(load_first(r0 + 2 * i + VLEN, n_hi), load_first(r1 + 2 * i + VLEN, n_hi));
    store_first(y + i, out_w - i, max_nan(even_lanes(lo, hi), odd_lanes(lo, hi)));
  }
#else
  for (; i < out_w; i++) {
    y[i] = max4_nan(r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]);
  }
#endif
}

