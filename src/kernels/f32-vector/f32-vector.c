/* Vector micro-kernels over contiguous or strided runs: one portable C source that the build
 * compiles three times, with baseline, AVX2+FMA and AVX-512 flags, so the compiler vectorises
 * each copy for its instruction set. FC_ISA names the copy: the symbols end in __FC_ISA.
 * Contracts: src/include/fc_kernels.h. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

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

/* The first `count` lanes of a vector (0 <= count <= VLEN), loaded with the others zero or
 * stored leaving the others alone: a masked tail touches no memory past its last lane. */
#if defined(__AVX512F__)
static inline __mmask16 first_lanes(size_t count) { return (__mmask16)((1u << count) - 1); }
static inline vf load_first(const float* p, size_t count) {
  return (vf)_mm512_maskz_loadu_ps(first_lanes(count), p);
}
static inline void store_first(float* p, vf v, size_t count) {
  _mm512_mask_storeu_ps(p, first_lanes(count), (__m512)v);
}
#elif defined(__AVX2__)
static inline __m256i first_lanes(size_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf load_first(const float* p, size_t count) {
  return (vf)_mm256_maskload_ps(p, first_lanes(count));
}
static inline void store_first(float* p, vf v, size_t count) {
  _mm256_maskstore_ps(p, first_lanes(count), (__m256)v);
}
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
/* How many of a tail's `floats` floats fall in its vector `k`. */
static inline size_t lanes_in(size_t floats, size_t k) {
  if (floats <= k * VLEN) return 0;
  return floats - k * VLEN < VLEN ? floats - k * VLEN : VLEN;
}

/* Stride 2: two vectors of the row (VLEN groups) split into their even and odd columns. The
 * tail of m < VLEN groups reads its 2m floats and writes m floats per phase through masks. */
static void deinterleave2(size_t n, const float* x, float* const* y) {
  size_t i = 0;
  for (; i + VLEN <= n; i += VLEN) {
    const vf a = load(x + 2 * i), b = load(x + 2 * i + VLEN);
    store(y[0] + i, even_lanes(a, b));
    store(y[1] + i, odd_lanes(a, b));
  }
  if (i == n) return;
  const size_t m = n - i, floats = 2 * m;
  const vf a = load_first(x + 2 * i, lanes_in(floats, 0));
  const vf b = load_first(x + 2 * i + VLEN, lanes_in(floats, 1));
  store_first(y[0] + i, even_lanes(a, b), m);
  store_first(y[1] + i, odd_lanes(a, b), m);
}

/* Stride 4: four vectors of the row split twice, into columns 0 mod 2 and 1 mod 2, then each of
 * those into its two phases. */
static inline void split4(vf a, vf b, vf c, vf d, vf* phases) {
  const vf even_ab = even_lanes(a, b), even_cd = even_lanes(c, d);
  const vf odd_ab = odd_lanes(a, b), odd_cd = odd_lanes(c, d);
  phases[0] = even_lanes(even_ab, even_cd);
  phases[1] = even_lanes(odd_ab, odd_cd);
  phases[2] = odd_lanes(even_ab, even_cd);
  phases[3] = odd_lanes(odd_ab, odd_cd);
}

static void deinterleave4(size_t n, const float* x, float* const* y) {
  vf phases[4];
  size_t i = 0;
  for (; i + VLEN <= n; i += VLEN) {
    const float* row = x + 4 * i;
    split4(load(row), load(row + VLEN), load(row + 2 * VLEN), load(row + 3 * VLEN), phases);
    for (size_t p = 0; p < 4; p++) store(y[p] + i, phases[p]);
  }
  if (i == n) return;
  const size_t m = n - i, floats = 4 * m;
  const float* row = x + 4 * i;
  split4(load_first(row, lanes_in(floats, 0)), load_first(row + VLEN, lanes_in(floats, 1)),
         load_first(row + 2 * VLEN, lanes_in(floats, 2)),
         load_first(row + 3 * VLEN, lanes_in(floats, 3)), phases);
  for (size_t p = 0; p < 4; p++) store_first(y[p] + i, phases[p], m);
}
#endif

void FC_NAME(fc_f32_vdeinterleave_ukernel)(size_t n, const float* restrict x, size_t stride,
                                           float* const* restrict y) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if (stride == 2 || stride == 4) {
    if (stride == 2) deinterleave2(n, x, y);
    else deinterleave4(n, x, y);
    return;
  }
#endif
  for (size_t p = 0; p < stride; p++) {
    for (size_t i = 0; i < n; i++) y[p][i] = x[i * stride + p];
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
