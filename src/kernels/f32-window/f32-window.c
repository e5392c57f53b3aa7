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

/* max(acc, v) where NaN wins, as in numpy.maximum. The x86 max instruction returns v when
 * either is NaN, so it is right except where acc is NaN, which keeps acc: with AVX-512 a
 * compare and a merge-masked max, half the instructions of compares and a select (the 3x3
 * max-pool kernels are bound by them). */
#if defined(__AVX512F__)
static inline vf max_nan(vf acc, vf v) {
  const __mmask16 ordered = _mm512_cmp_ps_mask((__m512)acc, (__m512)acc, _CMP_ORD_Q);
  return (vf)_mm512_mask_max_ps((__m512)acc, ordered, (__m512)acc, (__m512)v);
}
#elif defined(__AVX2__)
static inline vf max_nan(vf acc, vf v) {
  const __m256 a = (__m256)acc;
  return (vf)_mm256_blendv_ps(_mm256_max_ps(a, (__m256)v), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}
#else
static inline vf max_nan(vf acc, vf v) {
  const vi take = (v > acc) | (v != v);
  return (vf)(((vi)v & take) | ((vi)acc & ~take));
}
#endif

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

/* Masked loads and stores for the ends of rows read in place (the max-pool kernels below). */

/* The lanes l in [first, end) of the vector at p; -inf in the others, whose memory is not read. */
#if defined(__AVX512F__)
static inline vf load_inside(const float* p, size_t first, size_t end) {
  const __mmask16 m = (__mmask16)(((1u << end) - 1) & ~((1u << first) - 1));
  return (vf)_mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()), m, p);
}
#elif defined(__AVX2__)
static inline vf load_inside(const float* p, size_t first, size_t end) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)first), index),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)end), index));
  return (vf)_mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), _mm256_maskload_ps(p, m),
                              _mm256_castsi256_ps(m));
}
#else
static inline vf load_inside(const float* p, size_t first, size_t end) {
  vf v = (vf){} - __builtin_inff();
  for (size_t l = first; l < end; l++) v[l] = p[l];
  return v;
}
#endif

/* Elements [q, q + VLEN) of a run of n floats, -inf outside it. */
static inline vf load_span(const float* x, ptrdiff_t q, size_t n) {
  if (q >= 0 && q + VLEN <= (ptrdiff_t)n) return load(x + q);
  if (q + VLEN <= 0 || q >= (ptrdiff_t)n) return (vf){} - __builtin_inff();
  const size_t first = q < 0 ? (size_t)-q : 0;
  const size_t end = q + VLEN > (ptrdiff_t)n ? (size_t)((ptrdiff_t)n - q) : VLEN;
  return load_inside(x + q, first, end);
}

/* y[i, i + VLEN) of an output row, only its first n - i lanes when the row ends inside. */
static inline void store_row(float* y, size_t i, size_t n, vf v) {
  if (i + VLEN <= n) {
    store(y + i, v);
    return;
  }
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(y + i, (__mmask16)((1u << (n - i)) - 1), (__m512)v);
#else
  for (size_t l = 0; l < n - i; l++) y[i + l] = v[l];
#endif
}

/* One output row of a 2x2, stride-2 max pooling: y[i] = max of r0[2i], r0[2i + 1], r1[2i] and
 * r1[2i + 1] for i < out_w (NaN wins). Reads only those 2 * out_w columns of each row, in place:
 * no layout copy, no slack. The end of a row is one masked vector, not a scalar loop (GoogLeNet's
 * 7-wide maxpool4 rows were all tail). */
void FC_NAME(fc_f32_maxpool2x2_ukernel)(size_t out_w, const float* r0, const float* r1, float* y) {
  size_t i = 0;
  for (; i + VLEN <= out_w; i += VLEN) {
    const vf lo = max_nan(load(r0 + 2 * i), load(r1 + 2 * i));
    const vf hi = max_nan(load(r0 + 2 * i + VLEN), load(r1 + 2 * i + VLEN));
    store(y + i, max_nan(even_lanes(lo, hi), odd_lanes(lo, hi)));
  }
  if (i < out_w) {
    const size_t cols = 2 * (out_w - i);
    const vf lo = max_nan(load_span(r0 + 2 * i, 0, cols), load_span(r1 + 2 * i, 0, cols));
    const vf hi = max_nan(load_span(r0 + 2 * i, VLEN, cols), load_span(r1 + 2 * i, VLEN, cols));
    store_row(y, i, out_w, max_nan(even_lanes(lo, hi), odd_lanes(lo, hi)));
  }
}

/* 3x3 max pooling at stride 1 and 2, FC_MAXPOOL_ROWS output rows per call, input rows read in
 * place. Separable: the vertical max of the three input rows of an output row is taken at
 * whole-vector column positions (a column vector), then the horizontal max of three neighbours
 * out of two consecutive column vectors, shifted in registers (stride 1) or split into even and
 * odd lanes (stride 2). Each column vector is computed once and carried to the next iteration,
 * and the two output rows of a call share the loads (and at stride 1 the max) of their common
 * input rows. Lanes left of the row or past its end are -inf, loaded with masks that never
 * touch memory there, so the ends of rows, and whole narrow rows, are masked vectors rather
 * than scalar loops. */
#if FC_MAXPOOL_FLAT_MAX % VLEN
#error "FC_MAXPOOL_FLAT_MAX must be a multiple of the vector length"
#endif
#if FC_MAXPOOL_ROWS != 2
#error "the 3x3 max-pool kernels share the input rows of exactly two output rows"
#endif

/* The vertical maxes, for both output rows, of the columns [c, c + VLEN) of the input rows x
 * (row r reads x[stride * r], x[stride * r + 1], x[stride * r + 2]); -inf outside [0, width).
 * `edge` is a constant (the compiler makes two copies): 0 when the caller knows the columns lie
 * inside the rows, plain loads that the compiler folds into the max instructions. */
static inline __attribute__((always_inline)) void column_max(const float* const* x, size_t stride,
                                                             ptrdiff_t c, size_t width,
                                                             vf v[FC_MAXPOOL_ROWS], int edge) {
  const size_t rows = stride * (FC_MAXPOOL_ROWS - 1) + 3;
  vf a[5];
  if (!edge || (c >= 0 && c + VLEN <= (ptrdiff_t)width)) {
    for (size_t j = 0; j < rows; j++) a[j] = load(x[j] + c);
  } else {
    for (size_t j = 0; j < rows; j++) a[j] = load_span(x[j], c, width);
  }
  if (stride == 1) {
    const vf shared = max_nan(a[1], a[2]);
    v[0] = max_nan(a[0], shared);
    v[1] = max_nan(shared, a[3]);
  } else {
    v[0] = max_nan(max_nan(a[0], a[1]), a[2]);
    v[1] = max_nan(max_nan(a[2], a[3]), a[4]);
  }
}


void FC_NAME(fc_f32_maxpool3x3s1_ukernel)(size_t n, const float* const* x, size_t pad,
                                          size_t width, float* const* y) {
  const ptrdiff_t c0 = -(ptrdiff_t)pad;
  vf cur[FC_MAXPOOL_ROWS], next[FC_MAXPOOL_ROWS];
  column_max(x, 1, c0, width, cur, 1);
  for (size_t i = 0; i < n; i += VLEN) {
    column_max(x, 1, c0 + (ptrdiff_t)(i + VLEN), width, next, 1);
    for (size_t r = 0; r < FC_MAXPOOL_ROWS; r++) {
      const vf m = max_nan(max_nan(cur[r], shift1(cur[r], next[r])), shift2(cur[r], next[r]));
      store_row(y[r], i, n, m);
      cur[r] = next[r];
    }
  }
}

/* Output column i + l reads columns 2 (i + l) - pad + {0, 1, 2}: the even lanes, the odd lanes
 * and the even lanes shifted by one of the two column vectors from 2 i - pad. Iterations whose
 * two new column vectors lie inside the rows skip the edge checks: 20-30 % faster on 56- and
 * 112-wide planes than checking every column vector (one thread). */
void FC_NAME(fc_f32_maxpool3x3s2_ukernel)(size_t n, const float* const* x, size_t pad,
                                          size_t width, float* const* y) {
  const ptrdiff_t c0 = -(ptrdiff_t)pad;
  vf lo[FC_MAXPOOL_ROWS], hi[FC_MAXPOOL_ROWS], next[FC_MAXPOOL_ROWS];
  column_max(x, 2, c0, width, lo, 1);
  for (size_t i = 0; i < n; i += VLEN) {
    const ptrdiff_t c = c0 + (ptrdiff_t)(2 * i);
    if (c + VLEN >= 0 && c + 3 * VLEN <= (ptrdiff_t)width) {
      column_max(x, 2, c + VLEN, width, hi, 0);
      column_max(x, 2, c + 2 * VLEN, width, next, 0);
    } else {
      column_max(x, 2, c + VLEN, width, hi, 1);
      column_max(x, 2, c + 2 * VLEN, width, next, 1);
    }
    for (size_t r = 0; r < FC_MAXPOOL_ROWS; r++) {
      const vf even = even_lanes(lo[r], hi[r]);
      const vf m = max_nan(max_nan(even, odd_lanes(lo[r], hi[r])), shift1(even, next[r]));
      store_row(y[r], i, n, m);
      lo[r] = next[r];
    }
  }
}

/* Stride 1 with one row and column of padding on every side, on small planes: each plane is one
 * flat run (output q = oh * width + ow, as large as the input), so a vector spans several rows
 * instead of leaving most lanes of one short row empty (a 7x7 plane is 4 vectors, not 7). The
 * rows above and below are the flat run's elements width before and after (-inf outside the
 * plane); the left and right neighbours are the vertical maxes shifted by one lane, -inf in the
 * lanes of the first (left) and last (right) column, which would wrap into the neighbouring row.
 * Those lane masks depend only on the width: made once per call. */

static inline vf select_lanes(vi keep, vf a, vf b) {
  return (vf)(((vi)a & keep) | ((vi)b & ~keep));
}

/* The vertical maxes of the flat outputs [q, q + VLEN): rows above and below, width apart. */
static inline vf flat_column_max(const float* x, ptrdiff_t q, size_t width, size_t n) {
  const ptrdiff_t w = (ptrdiff_t)width;
  return max_nan(max_nan(load_span(x, q, n), load_span(x, q - w, n)), load_span(x, q + w, n));
}

void FC_NAME(fc_f32_maxpool3x3s1_flat_ukernel)(size_t planes, size_t height, size_t width,
                                               const float* x, float* y) {
  const size_t n = height * width, nvec = (n + VLEN - 1) / VLEN;
  vi has_left[FC_MAXPOOL_FLAT_MAX / VLEN], has_right[FC_MAXPOOL_FLAT_MAX / VLEN];
  size_t ow = 0;
  for (size_t v = 0; v < nvec; v++) {
    for (size_t l = 0; l < VLEN; l++) {
      has_left[v][l] = ow != 0 ? -1 : 0;
      has_right[v][l] = ow + 1 != width ? -1 : 0;
      ow = ow + 1 == width ? 0 : ow + 1;
    }
  }
  const vf none = (vf){} - __builtin_inff();
  for (size_t p = 0; p < planes; p++, x += n, y += n) {
    vf prev = none, cur = flat_column_max(x, 0, width, n);
    for (size_t v = 0; v < nvec; v++) {
      const vf next = flat_column_max(x, (ptrdiff_t)((v + 1) * VLEN), width, n);
      const vf left = select_lanes(has_left[v], shift_in_last(prev, cur), none);
      const vf right = select_lanes(has_right[v], shift1(cur, next), none);
      store_row(y, v * VLEN, n, max_nan(max_nan(cur, left), right));
      prev = cur;
      cur = next;
    }
  }
}
