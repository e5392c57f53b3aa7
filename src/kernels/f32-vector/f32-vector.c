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

#if defined(__AVX512F__) || defined(__AVX2__)
/* The vector of a padded row at column `start` (negative in the left padding): the lanes whose
 * column lies in [0, width) are loaded, the others are `pad` and touch no memory. */
#if defined(__AVX512F__)
static inline vf load_masked(const float* p, size_t first, size_t end, vf pad) {
  const __mmask16 m = (__mmask16)(((1u << end) - 1) & ~((1u << first) - 1));
  return (vf)_mm512_mask_loadu_ps((__m512)pad, m, p);
}
#else
static inline vf load_masked(const float* p, size_t first, size_t end, vf pad) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)first), index),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)end), index));
  return (vf)_mm256_blendv_ps((__m256)pad, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
#endif

static inline vf load_padded(const float* x, ptrdiff_t start, size_t width, vf pad) {
  if (start >= 0 && start + VLEN <= (ptrdiff_t)width) return load(x + start);
  const ptrdiff_t first = start < 0 ? -start : 0, end = (ptrdiff_t)width - start;
  if (end <= first || first >= VLEN) return pad;
  return load_masked(x + start, (size_t)first, end < VLEN ? (size_t)end : VLEN, pad);
}

/* The first `count` < VLEN lanes of v (a row's last columns): a masked store on AVX-512, lane by
 * lane on AVX2 (not measured against vmaskmovps). */
static inline void store_first(float* p, vf v, size_t count) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << count) - 1), (__m512)v);
#else
  for (size_t l = 0; l < count; l++) p[l] = v[l];
#endif
}

/* Stride 4: four vectors of the row split twice, into columns 0 and 1 mod 2, then each of those
 * into its two phases. */
static inline void split4(const vf* v, vf* phases) {
  const vf even_ab = even_lanes(v[0], v[1]), even_cd = even_lanes(v[2], v[3]);
  const vf odd_ab = odd_lanes(v[0], v[1]), odd_cd = odd_lanes(v[2], v[3]);
  phases[0] = even_lanes(even_ab, even_cd);
  phases[1] = even_lanes(odd_ab, odd_cd);
  phases[2] = odd_lanes(even_ab, even_cd);
  phases[3] = odd_lanes(odd_ab, odd_cd);
}

/* VLEN columns of every phase from `stride` vectors of the row (the padding blended in by the
 * loads), split by permutes; `stride` is a constant in each inlined copy. */
static inline void deinterleave(size_t n, const float* x, size_t left, size_t width,
                                const size_t stride, float pad, float* const* y) {
  const vf pads = (vf){} + pad;
  for (size_t i = 0; i < n; i += VLEN) {
    const ptrdiff_t start = (ptrdiff_t)(i * stride) - (ptrdiff_t)left;
    vf v[4], phases[4];
    for (size_t k = 0; k < stride; k++) {
      v[k] = load_padded(x, start + (ptrdiff_t)(k * VLEN), width, pads);
    }
    if (stride == 2) {
      phases[0] = even_lanes(v[0], v[1]);
      phases[1] = odd_lanes(v[0], v[1]);
    } else {
      split4(v, phases);
    }
    for (size_t p = 0; p < stride; p++) {
      if (i + VLEN <= n) store(y[p] + i, phases[p]);
      else store_first(y[p] + i, phases[p], n - i);
    }
  }
}

#if VLEN == 8
/* Column `c` of a padded row. */
static inline float padded(const float* x, ptrdiff_t c, size_t width, float pad) {
  return c >= 0 && c < (ptrdiff_t)width ? x[c] : pad;
}

/* AVX2, stride 2: the vectors that lie inside the row split by two shuffles each (even_lanes),
 * the few columns at either end one by one. The padded vectors of `deinterleave` (masked loads,
 * stores lane by lane) ran 3x slower on rows of 29 outputs, and the per-phase copy below, which
 * GCC vectorises with two vpermd and a blend per vector, as slow (ResNet-50's 128 x 56 x 56 input
 * into phase planes: 0.24 and 0.21 -> 0.075 ms, Zen 3, a C harness). */
static inline void split2_inside(size_t n, const float* x, size_t left, size_t width, float pad,
                                 float* const* y) {
  const size_t first = (left + 1) / 2; /* the first output whose even column is inside */
  float *even = y[0], *odd = y[1];
  size_t i = 0;
  for (; i < n && i < first; i++) {
    even[i] = padded(x, (ptrdiff_t)(2 * i) - (ptrdiff_t)left, width, pad);
    odd[i] = padded(x, (ptrdiff_t)(2 * i + 1) - (ptrdiff_t)left, width, pad);
  }
  for (; i + VLEN <= n && 2 * (i + VLEN) <= width + left; i += VLEN) {
    const float* src = x + 2 * i - left;
    const vf lo = load(src), hi = load(src + VLEN);
    store(even + i, even_lanes(lo, hi));
    store(odd + i, odd_lanes(lo, hi));
  }
  for (; i < n; i++) {
    even[i] = padded(x, (ptrdiff_t)(2 * i) - (ptrdiff_t)left, width, pad);
    odd[i] = padded(x, (ptrdiff_t)(2 * i + 1) - (ptrdiff_t)left, width, pad);
  }
}
#endif
#endif

/* One phase without permutes: y[i] = x[shift + i * stride] inside the row, `pad` outside; the
 * copy of the inside columns vectorises where `stride` is a constant. */
static inline void split_phase(size_t n, const float* restrict x, ptrdiff_t shift,
                               size_t width, const size_t stride, float pad,
                               float* restrict y) {
  const ptrdiff_t s = (ptrdiff_t)stride, last = (ptrdiff_t)width - 1 - shift;
  size_t lo = shift < 0 ? (size_t)((-shift + s - 1) / s) : 0;
  size_t hi = last < 0 ? 0 : (size_t)(last / s + 1);
  lo = lo < n ? lo : n;
  hi = hi < n ? hi : n;
  hi = hi > lo ? hi : lo;
  for (size_t i = 0; i < lo; i++) y[i] = pad;
  for (size_t i = lo; i < hi; i++) y[i] = x[(ptrdiff_t)(i * stride) + shift];
  for (size_t i = hi; i < n; i++) y[i] = pad;
}

/* Where the padded permutes pay: stride 4, and stride 2 on AVX-512 (AVX2 has split2_inside). */
static inline int split_by_permutes(size_t stride) {
  return stride == 4 || (stride == 2 && VLEN == 16);
}

void FC_NAME(fc_f32_vdeinterleave_ukernel)(size_t n, const float* x, size_t left, size_t width,
                                           size_t stride, float pad, float* const* y) {
#if defined(__AVX2__) && VLEN == 8
  if (stride == 2) {
    split2_inside(n, x, left, width, pad, y);
    return;
  }
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
  if (split_by_permutes(stride)) {
    if (stride == 2) deinterleave(n, x, left, width, 2, pad, y);
    else deinterleave(n, x, left, width, 4, pad, y);
    return;
  }
#endif
  for (size_t p = 0; p < stride; p++) {
    const ptrdiff_t shift = (ptrdiff_t)p - (ptrdiff_t)left;
    if (stride == 2) split_phase(n, x, shift, width, 2, pad, y[p]);
    else split_phase(n, x, shift, width, stride, pad, y[p]);
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
