/* Depthwise 3x3 convolution, FC_DW_ROWS output rows per call (src/ops/dwconv.c drives them);
 * at the end, a stride-1 kernel for small planes that takes each plane as one flat run.
 *
 * Each kernel call computes FC_DW_ROWS output rows of one plane from the input rows they read,
 * read in place: the left and right padding is never stored anywhere, the vectors that reach
 * into it are loaded with masks that zero the lanes outside the row (and never touch memory
 * there). An input row is loaded once per call and feeds every output row that reads it (up to
 * three at stride 1, two at stride 2); the nine weights stay in registers; bias and clamp
 * (ReLU, ReLU6) are applied in the store, which is masked at the end of a row.
 *
 * Stride 2 needs the even and odd columns of a row as separate vectors: two contiguous loads
 * are split by permutes (the phase split, done in registers).
 *
 * One portable C source compiled once per ISA (-DFC_ISA), with GCC/Clang vector extensions and,
 * for the masked loads and stores, the ISA's intrinsics. */
#include "fc_kernels.h"
#include "fc_portable_simd.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* clamp(v, lo, hi) keeping NaN, as the GEMM epilogue does: max and min return their second
 * operand when either is NaN. Two instructions; the compare-and-select of vector extensions
 * took nine, as many as the FMAs of a block. */
#if defined(__AVX512F__)
static inline vf clamp(vf v, float lo, float hi) {
  return (vf)_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), (__m512)v));
}
#elif defined(__AVX2__)
static inline vf clamp(vf v, float lo, float hi) {
  return (vf)_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), (__m256)v));
}
#else
static inline vf clamp(vf v, float lo, float hi) {
  const vi below = v < lo, above = v > hi;
  v = (vf)(((vi)v & ~below) | ((vi)((vf){} + lo) & below));
  return (vf)(((vi)v & ~above) | ((vi)((vf){} + hi) & above));
}
#endif

/* The lanes [first, end) of a vector, as the ISA's masked loads and stores want them. */
#if defined(__AVX512F__)
typedef __mmask16 lane_mask;
static inline lane_mask lanes(size_t first, size_t end) {
  return (lane_mask)(((1u << end) - 1) & ~((1u << first) - 1));
}
static inline vf load_lanes(const float* p, lane_mask m) {
  return (vf)_mm512_maskz_loadu_ps(m, p);
}
static inline void store_lanes(float* p, vf v, lane_mask m) {
  _mm512_mask_storeu_ps(p, m, (__m512)v);
}
#elif defined(__AVX2__)
typedef __m256i lane_mask;
static inline lane_mask lanes(size_t first, size_t end) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)first), index),
                             _mm256_cmpgt_epi32(_mm256_set1_epi32((int)end), index));
}
static inline vf load_lanes(const float* p, lane_mask m) { return (vf)_mm256_maskload_ps(p, m); }
static inline void store_lanes(float* p, vf v, lane_mask m) {
  _mm256_maskstore_ps(p, m, (__m256)v);
}
#else
typedef struct lane_mask {
  size_t first, end;
} lane_mask;
static inline lane_mask lanes(size_t first, size_t end) { return (lane_mask){first, end}; }
static inline vf load_lanes(const float* p, lane_mask m) {
  vf v = {};
  for (size_t l = m.first; l < m.end; l++) v[l] = p[l];
  return v;
}
static inline void store_lanes(float* p, vf v, lane_mask m) {
  for (size_t l = m.first; l < m.end; l++) p[l] = v[l];
}
#endif

/* The lanes of a vector starting at column `start` of a row that lie in [0, width). */
static inline lane_mask lanes_inside(ptrdiff_t start, size_t width) {
  const ptrdiff_t first = start < 0 ? -start : 0, end = (ptrdiff_t)width - start;
  if (end <= first) return lanes(0, 0);
  return lanes((size_t)first, end < VLEN ? (size_t)end : VLEN);
}

/* Whether a vector starting at column `start` lies inside [0, width). */
static inline int inside(ptrdiff_t start, size_t width) {
  return start >= 0 && start + VLEN <= (ptrdiff_t)width;
}

/* Adds input row j's three column taps to every output row r that reads it (kernel row
 * kh = j - stride * r). Called with constant j and stride, so the loops unroll away. */
static inline void add_row(vf acc[FC_DW_ROWS], const vf wv[9], size_t j, size_t stride, vf t0,
                           vf t1, vf t2) {
#pragma GCC unroll 8
  for (size_t r = 0; r < FC_DW_ROWS; r++) {
    if (j < stride * r || j - stride * r > 2) continue;
    const size_t kh = j - stride * r;
    acc[r] += wv[3 * kh] * t0;
    acc[r] += wv[3 * kh + 1] * t1;
    acc[r] += wv[3 * kh + 2] * t2;
  }
}

static inline void start_rows(vf acc[FC_DW_ROWS], const fc_window_epilogue* ep) {
#pragma GCC unroll 8
  for (size_t r = 0; r < FC_DW_ROWS; r++) acc[r] = (vf){} + ep->init;
}

/* Output columns [i, min(i + VLEN, n)) of every row. */
static inline void store_rows(float* const* y, size_t i, size_t n, vf acc[FC_DW_ROWS],
                              const fc_window_epilogue* ep) {
  const int whole = i + VLEN <= n;
  const lane_mask m = lanes(0, whole ? VLEN : n - i);
  const float lo = ep->min, hi = ep->max; /* read once: the stores might alias them */
#pragma GCC unroll 8
  for (size_t r = 0; r < FC_DW_ROWS; r++) {
    const vf v = clamp(acc[r], lo, hi);
    if (whole) store(y[r] + i, v);
    else store_lanes(y[r] + i, v, m);
  }
}

/* One cache line at p brought into L1, for reading or for writing (prefetchw, which every
 * AVX-512 processor has, takes the line exclusive: no second request when the store comes). An
 * asm statement because GCC 12 at -O1 and up deleted these loops of __builtin_prefetch as
 * loops without effect, leaving no prefetch at all. */
static inline void prefetch_line(const float* p, int write) {
#if defined(__AVX512F__)
  if (write) __asm__ volatile("prefetchw %0" : : "m"(*(const char*)p));
  else __asm__ volatile("prefetcht0 %0" : : "m"(*(const char*)p));
#elif defined(__x86_64__) || defined(__i386__)
  (void)write;
  __asm__ volatile("prefetcht0 %0" : : "m"(*(const char*)p));
#else
  (void)write;
  __builtin_prefetch(p, 0, 3);
#endif
}

/* Prefetches the columns [column, column + count * VLEN) of `rows` rows `ld` floats apart (none
 * when `first` is NULL), one per VLEN floats and none past a row's end (`width`). */
static inline void prefetch_rows(const float* first, size_t rows, size_t ld, size_t width,
                                 size_t column, size_t count, int write) {
  if (!first) return;
  for (size_t r = 0; r < rows; r++) {
    for (size_t k = 0; k < count && column + k * VLEN < width; k++) {
      prefetch_line(first + r * ld + column + k * VLEN, write);
    }
  }
}

/* After the output block at column i: the next call's input columns this block's position
 * stands for (`count` vectors from input column `column`) and output block, so that they arrive
 * while this call computes. */
static inline void prefetch_ahead(const fc_dw_ahead* a, size_t width, size_t n, size_t i,
                                  size_t column, size_t count) {
  prefetch_rows(a->x, a->x_rows, width, width, column, count, 0);
  prefetch_rows(a->y, a->y_rows, n, n, i, 1, 1);
}

/* Stride 1: output column i + l, tap kw reads input column i + l + kw - pad. `edge` selects
 * masked loads (a block reaching into the padding); the compiler makes two copies. */
static inline void block_s1(size_t i, const float* const* x, ptrdiff_t pad, size_t width,
                            const vf wv[9], vf acc[FC_DW_ROWS], int edge) {
  const ptrdiff_t start = (ptrdiff_t)i - pad;
  lane_mask m[3];
  if (edge) {
    for (size_t kw = 0; kw < 3; kw++) m[kw] = lanes_inside(start + (ptrdiff_t)kw, width);
  }
#pragma GCC unroll 16
  for (size_t j = 0; j < FC_DW_ROWS + 2; j++) {
    const float* xj = x[j] + start;
    if (edge) {
      add_row(acc, wv, j, 1, load_lanes(xj, m[0]), load_lanes(xj + 1, m[1]),
              load_lanes(xj + 2, m[2]));
    } else {
      add_row(acc, wv, j, 1, load(xj), load(xj + 1), load(xj + 2));
    }
  }
}

/* Stride 2: output column i + l, tap kw reads input column 2 * (i + l) + kw - pad. Two loads
 * per row from column start + 1 (start = 2 * i - pad; aligned when pad is odd and the row is)
 * give taps 1 and 2 as their even and odd columns; tap 0 is tap 2 moved up one lane, its first
 * lane (column start) the last lane of the previous block's tap 2, carried in `carry[j]`. Half
 * the loads of loading taps 0 and 2 separately, which were the bottleneck. */
static inline void block_s2(size_t i, const float* const* x, ptrdiff_t pad, size_t width,
                            const vf wv[9], vf acc[FC_DW_ROWS], vf carry[2 * FC_DW_ROWS + 1],
                            int edge) {
  const ptrdiff_t first = 2 * (ptrdiff_t)i - pad + 1;
  lane_mask m[2];
  if (edge) {
    m[0] = lanes_inside(first, width);
    m[1] = lanes_inside(first + VLEN, width);
  }
#pragma GCC unroll 16
  for (size_t j = 0; j < 2 * FC_DW_ROWS + 1; j++) {
    const float* xj = x[j] + first;
    const vf lo = edge ? load_lanes(xj, m[0]) : load(xj);
    const vf hi = edge ? load_lanes(xj + VLEN, m[1]) : load(xj + VLEN);
    const vf t2 = odd_lanes(lo, hi);
    const vf t0 = shift_in_last(carry[j], t2);
    carry[j] = t2;
    add_row(acc, wv, j, 2, t0, even_lanes(lo, hi), t2);
  }
}

void FC_NAME(fc_f32_dwconv3x3s1_ukernel)(size_t n, const float* const* x, size_t pad,
                                         size_t width, const float* w,
                                         const fc_window_epilogue* ep, float* const* y,
                                         const fc_dw_ahead* ahead) {
  vf wv[9];
  for (size_t t = 0; t < 9; t++) wv[t] = (vf){} + w[t];
  for (size_t i = 0; i < n; i += VLEN) {
    vf acc[FC_DW_ROWS];
    start_rows(acc, ep);
    const ptrdiff_t start = (ptrdiff_t)i - (ptrdiff_t)pad;
    if (inside(start, width) && inside(start + 2, width)) {
      block_s1(i, x, (ptrdiff_t)pad, width, wv, acc, 0);
    } else {
      block_s1(i, x, (ptrdiff_t)pad, width, wv, acc, 1);
    }
    store_rows(y, i, n, acc, ep);
    if (ahead) prefetch_ahead(ahead, width, n, i, i, 1);
  }
}

void FC_NAME(fc_f32_dwconv3x3s2_ukernel)(size_t n, const float* const* x, size_t pad,
                                         size_t width, const float* w,
                                         const fc_window_epilogue* ep, float* const* y,
                                         const fc_dw_ahead* ahead) {
  vf wv[9];
  for (size_t t = 0; t < 9; t++) wv[t] = (vf){} + w[t];
  /* Before the first block, the carried lane is column -pad: padding, or column 0 if pad = 0. */
  vf carry[2 * FC_DW_ROWS + 1];
  for (size_t j = 0; j < 2 * FC_DW_ROWS + 1; j++) carry[j] = (vf){} + (pad ? 0.0f : x[j][0]);
  for (size_t i = 0; i < n; i += VLEN) {
    vf acc[FC_DW_ROWS];
    start_rows(acc, ep);
    const ptrdiff_t first = 2 * (ptrdiff_t)i - (ptrdiff_t)pad + 1;
    if (inside(first, width) && inside(first + VLEN, width)) {
      block_s2(i, x, (ptrdiff_t)pad, width, wv, acc, carry, 0);
    } else {
      block_s2(i, x, (ptrdiff_t)pad, width, wv, acc, carry, 1);
    }
    store_rows(y, i, n, acc, ep);
    if (ahead) prefetch_ahead(ahead, width, n, i, 2 * i, 2);
  }
}

/* Stride 1 on a small plane whose output rows are as wide as its input rows: the plane as one
 * flat run, output q = oh * width + ow, tap (kh, kw) at input q + (kh - pad_top) * width +
 * (kw - pad_left). Whole vectors span several rows (a 7x7 plane is 4 vectors, not 7 half-empty
 * ones); the lanes whose tap falls outside the plane (above, below, or wrapping into the
 * neighbouring row) are masked off. The masks depend only on the geometry, so they are made
 * once per call for all the planes of the call. */
#if defined(__AVX512F__)
typedef __mmask16 tap_mask;
static inline tap_mask tap_mask_of(vi m) {
  return _mm512_test_epi32_mask((__m512i)m, (__m512i)m);
}
static inline vf load_tap(const float* p, tap_mask m) { return (vf)_mm512_maskz_loadu_ps(m, p); }
#elif defined(__AVX2__)
typedef __m256i tap_mask;
static inline tap_mask tap_mask_of(vi m) { return (__m256i)m; }
static inline vf load_tap(const float* p, tap_mask m) { return (vf)_mm256_maskload_ps(p, m); }
#else
typedef vi tap_mask;
static inline tap_mask tap_mask_of(vi m) { return m; }
static inline vf load_tap(const float* p, tap_mask m) {
  vf v = {};
  for (size_t l = 0; l < VLEN; l++) {
    if (m[l]) v[l] = p[l];
  }
  return v;
}
#endif

/* masks[v][3 * kh + kw]: the lanes of vector v (outputs v * VLEN + l) whose tap (kh, kw) lies
 * inside the plane. Once per call, for all its planes; row and column are counted along rather
 * than divided out of each lane's index (that cost 3 % of a 576-channel 14x14 layer). */
static void flat_masks(const fc_dw_flat_geometry* g, size_t nvec, tap_mask (*masks)[9]) {
  const size_t n = g->out_h * g->width;
  size_t oh = 0, ow = 0;
  for (size_t v = 0; v < nvec; v++) {
    vi m[9];
    for (size_t t = 0; t < 9; t++) m[t] = (vi){};
    for (size_t l = 0; l < VLEN && v * VLEN + l < n; l++) {
      for (size_t t = 0; t < 9; t++) {
        const ptrdiff_t ih = (ptrdiff_t)(oh + t / 3) - (ptrdiff_t)g->pad_top;
        const ptrdiff_t iw = (ptrdiff_t)(ow + t % 3) - (ptrdiff_t)g->pad_left;
        const int inside = ih >= 0 && ih < (ptrdiff_t)g->in_h && iw >= 0 &&
                           iw < (ptrdiff_t)g->width;
        m[t][l] = inside ? -1 : 0;
      }
      if (++ow == g->width) {
        ow = 0;
        oh++;
      }
    }
    for (size_t t = 0; t < 9; t++) masks[v][t] = tap_mask_of(m[t]);
  }
}

/* Vectors v0 .. v0 + count - 1 of one plane, `count` (a constant) accumulators at a time: the
 * nine taps of one vector form a chain of dependent FMAs, which independent vectors hide. */
static inline __attribute__((always_inline)) void flat_vectors(
    const float* xp, float* yp, size_t v0, const size_t count, size_t nvec, vf init,
    const vf wv[9], const ptrdiff_t offsets[9], tap_mask (*masks)[9], lane_mask tail,
    const fc_window_epilogue* ep) {
  vf acc[4];
#pragma GCC unroll 4
  for (size_t u = 0; u < count; u++) acc[u] = init;
#pragma GCC unroll 9
  for (size_t t = 0; t < 9; t++) {
#pragma GCC unroll 4
    for (size_t u = 0; u < count; u++) {
      const size_t v = v0 + u;
      acc[u] += wv[t] * load_tap(xp + v * VLEN + offsets[t], masks[v][t]);
    }
  }
#pragma GCC unroll 4
  for (size_t u = 0; u < count; u++) {
    const size_t v = v0 + u;
    const vf out = clamp(acc[u], ep->min, ep->max);
    if (v + 1 < nvec) store(yp + v * VLEN, out);
    else store_lanes(yp + v * VLEN, out, tail);
  }
}

void FC_NAME(fc_f32_dwconv3x3s1_flat_ukernel)(size_t planes, const fc_dw_flat_geometry* g,
                                              const float* x, const float* w, const float* bias,
                                              const fc_window_epilogue* ep, float* y) {
  const size_t n = g->out_h * g->width, nvec = (n + VLEN - 1) / VLEN;
  const size_t in_plane = g->in_h * g->width;
  tap_mask masks[FC_DW_FLAT_MAX / VLEN][9];
  ptrdiff_t offsets[9];
  for (size_t t = 0; t < 9; t++) {
    offsets[t] = ((ptrdiff_t)(t / 3) - (ptrdiff_t)g->pad_top) * (ptrdiff_t)g->width +
                 (ptrdiff_t)(t % 3) - (ptrdiff_t)g->pad_left;
  }
  flat_masks(g, nvec, masks);
  const lane_mask tail = lanes(0, n - (nvec - 1) * VLEN);
  for (size_t p = 0; p < planes; p++) {
    vf wv[9];
    for (size_t t = 0; t < 9; t++) wv[t] = (vf){} + w[9 * p + t];
    const vf init = (vf){} + (bias ? bias[p] : 0.0f);
    const float* xp = x + p * in_plane;
    float* yp = y + p * n;
    size_t v = 0;
    for (; v + 4 <= nvec; v += 4) {
      flat_vectors(xp, yp, v, 4, nvec, init, wv, offsets, masks, tail, ep);
    }
    for (; v < nvec; v++) flat_vectors(xp, yp, v, 1, nvec, init, wv, offsets, masks, tail, ep);
  }
}

static inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* Channel-blocked depthwise 3x3 (stride 1 or 2) for small planes: VLEN planes at a time with the
 * channels as the vector lanes, as NCHWc engines compute it. On a 7x7 or 14x14 plane the row
 * and flat kernels spend most of their time on masks, permutes and partly empty vectors; here
 * every tap is one aligned load and one FMA. The price is two transposes (VLEN x VLEN, in
 * registers): the planes into a zero-padded buffer of pixels, and the results back out.
 *
 * The transpose takes the x86 shuffles that stay inside 128-bit lanes where it can (unpack,
 * then pairs: one cycle each) and whole 128-bit quarters after: four rounds over VLEN = 16
 * registers. Rounds that each swap one bit of the row and lane index also needed an
 * interleave of single lanes ({0, 16, 2, 18, ...}), which no cheap instruction does: a
 * two-table permute (vpermt2ps, which also overwrites a source, hence a copy each). */
#if VLEN == 16
#define UNPACK_LO {0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29}
#define UNPACK_HI {2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31}
#define PAIRS_LO {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}
#define PAIRS_HI {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}
#define QUARTERS_LO {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}
#define QUARTERS_HI {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}
#elif VLEN == 8
#define UNPACK_LO {0, 8, 1, 9, 4, 12, 5, 13}
#define UNPACK_HI {2, 10, 3, 11, 6, 14, 7, 15}
#define PAIRS_LO {0, 1, 8, 9, 4, 5, 12, 13}
#define PAIRS_HI {2, 3, 10, 11, 6, 7, 14, 15}
#define QUARTERS_LO {0, 1, 2, 3, 8, 9, 10, 11}
#define QUARTERS_HI {4, 5, 6, 7, 12, 13, 14, 15}
#else
#define UNPACK_LO {0, 4, 1, 5}
#define UNPACK_HI {2, 6, 3, 7}
#define PAIRS_LO {0, 1, 4, 5}
#define PAIRS_HI {2, 3, 6, 7}
#endif
/* dst[i] and dst[i + b] from src[i] and src[i + b] for the rows i in groups of 2b (i & b == 0).
 * Unrolled, so that the rows stay in registers. */
#define SHUFFLE_ROWS(dst, src, b, LO, HI)                                                          \
  _Pragma("GCC unroll 16") for (size_t i = 0; i < VLEN; i++) {                                     \
    if (i & (b)) continue;                                                                         \
    dst[i] = __builtin_shuffle(src[i], src[i + (b)], (vi)LO);                                      \
    dst[i + (b)] = __builtin_shuffle(src[i], src[i + (b)], (vi)HI);                                \
  }

/* r[i][l] becomes r[l][i]. Unpacking rows 2k, 2k + 1 puts lanes 4q + {0, 1} of both in the
 * first, 4q + {2, 3} in the second, interleaved; pairing rows k, k + 2 of that gathers lane 4q
 * + j of four rows in quarter q of row 4 * (k / 4) + j; the quarter rounds (rows i, i + 4, then
 * i, i + 8) move those quarters to their rows. */
static inline void transpose(vf r[VLEN]) {
  vf t[VLEN];
  SHUFFLE_ROWS(t, r, 1, UNPACK_LO, UNPACK_HI)
#pragma GCC unroll 4
  for (size_t k = 0; k < VLEN; k += 4) {
    r[k] = __builtin_shuffle(t[k], t[k + 2], (vi)PAIRS_LO);
    r[k + 1] = __builtin_shuffle(t[k], t[k + 2], (vi)PAIRS_HI);
    r[k + 2] = __builtin_shuffle(t[k + 1], t[k + 3], (vi)PAIRS_LO);
    r[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], (vi)PAIRS_HI);
  }
#if VLEN >= 8
  SHUFFLE_ROWS(t, r, 4, QUARTERS_LO, QUARTERS_HI)
#if VLEN == 16
  SHUFFLE_ROWS(r, t, 8, QUARTERS_LO, QUARTERS_HI)
#else
#pragma GCC unroll 8
  for (size_t i = 0; i < VLEN; i++) r[i] = t[i];
#endif
#endif
}

/* The n <= VLEN floats at offset `at` of `count` planes (`plane` floats apart; zero for the
 * missing planes of a partial group), transposed: pixel k's channels in r[k], k < n. The full
 * group's loads are unconditional. */
static inline void load_pixels(const float* x, size_t plane, size_t at, size_t n, size_t count,
                               vf r[VLEN]) {
  const lane_mask m = lanes(0, n);
  if (count == VLEN && n == VLEN) {
#pragma GCC unroll 16
    for (size_t c = 0; c < VLEN; c++) r[c] = load(x + c * plane + at);
  } else {
#pragma GCC unroll 16
    for (size_t c = 0; c < VLEN; c++) {
      r[c] = c < count ? load_lanes(x + c * plane + at, m) : (vf){};
    }
  }
  transpose(r);
}

/* The planes of one group into the padded pixel buffer t (hp x wp pixels): input pixel (ih, iw)
 * at (ih + pad_top, iw + pad_left), a row's pixels stored one after the other; the pixels no
 * tap reads (past hp or wp) are skipped. */
static void group_in(const fc_dw_cblock_geometry* g, const float* x, size_t count, size_t hp,
                     size_t wp, float* t) {
  const size_t plane = g->in_h * g->in_w;
  const size_t rows = min_size(g->in_h, hp - g->pad_top);
  const size_t cols = min_size(g->in_w, wp - g->pad_left);
  for (size_t ih = 0; ih < rows; ih++) {
    float* trow = t + ((ih + g->pad_top) * wp + g->pad_left) * VLEN;
    for (size_t iw = 0; iw < cols; iw += VLEN) {
      const size_t n = min_size(cols - iw, VLEN);
      vf r[VLEN];
      load_pixels(x, plane, ih * g->in_w + iw, n, count, r);
#pragma GCC unroll 16
      for (size_t k = 0; k < VLEN; k++) {
        if (k < n) store(trow + (iw + k) * VLEN, r[k]);
      }
    }
  }
}

/* Output row oh, columns [ow, ow + count) (count a constant), into pixel buffer o. */
static inline __attribute__((always_inline)) void pixels_out(
    const float* t, size_t wp, size_t stride, size_t oh, size_t ow, const size_t count,
    const vf wv[9], vf init, float lo, float hi, float* o) {
  vf acc[4];
#pragma GCC unroll 4
  for (size_t u = 0; u < count; u++) acc[u] = init;
#pragma GCC unroll 9
  for (size_t k = 0; k < 9; k++) {
    const float* row = t + ((oh * stride + k / 3) * wp + ow * stride + k % 3) * VLEN;
#pragma GCC unroll 4
    for (size_t u = 0; u < count; u++) acc[u] += wv[k] * load(row + u * stride * VLEN);
  }
#pragma GCC unroll 4
  for (size_t u = 0; u < count; u++) store(o + u * VLEN, clamp(acc[u], lo, hi));
}

/* The output pixels [q, q + n) of the group, transposed back into its `count` planes. */
static inline void store_pixels(const float* o, size_t q, size_t n, size_t count, size_t plane,
                                float* y) {
  vf r[VLEN];
#pragma GCC unroll 16
  for (size_t k = 0; k < VLEN; k++) r[k] = k < n ? load(o + (q + k) * VLEN) : (vf){};
  transpose(r);
  const lane_mask m = lanes(0, n);
  for (size_t c = 0; c < count; c++) {
    if (n == VLEN) store(y + c * plane + q, r[c]);
    else store_lanes(y + c * plane + q, r[c], m);
  }
}

void FC_NAME(fc_f32_dwconv3x3_cblock_ukernel)(size_t planes, const fc_dw_cblock_geometry* g,
                                              const float* x, const float* w, const float* bias,
                                              const fc_window_epilogue* ep, float* buffer,
                                              float* y) {
  const size_t s = g->stride, hp = (g->out_h - 1) * s + 3, wp = (g->out_w - 1) * s + 3;
  const size_t in_plane = g->in_h * g->in_w, out_plane = g->out_h * g->out_w;
  const float lo = ep->min, hi = ep->max;
  float* t = buffer;
  float* o = buffer + hp * wp * VLEN;
  /* Padding pixels are never written: zeroed once for all the groups. */
  for (size_t i = 0; i < hp * wp; i++) store(t + i * VLEN, (vf){});
  for (size_t c0 = 0; c0 < planes; c0 += VLEN) {
    const size_t count = planes - c0 < VLEN ? planes - c0 : VLEN;
    vf wv[9], init = (vf){};
    for (size_t k = 0; k < 9; k++) wv[k] = (vf){};
    for (size_t c = 0; c < count; c++) {
      for (size_t k = 0; k < 9; k++) wv[k][c] = w[9 * (c0 + c) + k];
      init[c] = bias ? bias[c0 + c] : 0.0f;
    }
    group_in(g, x + c0 * in_plane, count, hp, wp, t);
    for (size_t oh = 0; oh < g->out_h; oh++) {
      float* orow = o + oh * g->out_w * VLEN;
      size_t ow = 0;
      for (; ow + 4 <= g->out_w; ow += 4) {
        pixels_out(t, wp, s, oh, ow, 4, wv, init, lo, hi, orow + ow * VLEN);
      }
      for (; ow < g->out_w; ow++) {
        pixels_out(t, wp, s, oh, ow, 1, wv, init, lo, hi, orow + ow * VLEN);
      }
    }
    for (size_t q = 0; q < out_plane; q += VLEN) {
      const size_t n = out_plane - q < VLEN ? out_plane - q : VLEN;
      store_pixels(o, q, n, count, out_plane, y + c0 * out_plane);
    }
  }
}
